/*
 * JSON parsed straight from secure memory, for the decrypted answer.
 *
 * json.loads needs a str: decoding the UTF-8 makes one copy of the whole
 * plaintext, and CPython's UTF-8 decoder and JSON string scanner grow their
 * output in buffers that are reallocated and freed without being zeroed
 * (a non-ASCII answer left its ASCII prefix behind in the heap; measured
 * by tests/test_no_secret_left.py).  json_parse(buffer) reads the UTF-8
 * bytes in place and makes each Python object once, at its final size: a
 * string is measured (length, widest character) in a first pass over its
 * token and then written into a str of exactly that shape.  The only other
 * transient copy is a number's text, in a stack buffer (or, past 64
 * digits, a heap one) zeroed after use.
 *
 * The second pass trusts nothing the first one read: the caller may change
 * the buffer meanwhile (another thread or process writing it, e.g. while
 * this one holds the GIL).  It writes no more characters than were counted,
 * none wider than the widest measured, stops at the measured end, and
 * checks the copied plain runs in the new str itself; anything else is a
 * ValueError ("the buffer changed while it was parsed"), never a write out
 * of bounds or a malformed str.
 *
 * It accepts what json.loads accepts, with the same result: RFC 8259 JSON
 * plus NaN, Infinity and -Infinity; duplicate keys keep the last value (or,
 * with unique_keys, are refused: the package decoder's rule);
 * \u escapes may produce lone surrogates and pair up into one character;
 * raw control characters in strings are refused (strict mode).  Errors are
 * ValueError (invalid JSON or UTF-8, an int over the digit limit) and
 * RecursionError (nesting deeper than NOMYO_MAX_NESTING containers, see
 * csrc/nesting.h, or than the interpreter's recursion limit allows).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "jsondec.h"
#include "jsonscan.h"
#include "nesting.h"
#include "primitives.h"

typedef struct {
    const unsigned char *p;
    Py_ssize_t n;
    Py_ssize_t i;
    int unique; /* refuse a key that appears twice in one object */
    int depth;  /* containers open around d->i */
} Dec;

static PyObject *parse_value(Dec *d);

static PyObject *fail(Dec *d, const char *what)
{
    PyErr_Format(PyExc_ValueError, "invalid JSON: %s at byte %zd", what, d->i);
    return NULL;
}

static void skip_ws(Dec *d)
{
    while (d->i < d->n) {
        unsigned char c = d->p[d->i];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        d->i++;
    }
}

static int literal(Dec *d, const char *word)
{
    size_t len = strlen(word);
    if ((size_t)(d->n - d->i) < len || memcmp(d->p + d->i, word, len) != 0)
        return 0;
    d->i += (Py_ssize_t)len;
    return 1;
}

static int hex4(const unsigned char *s, Py_UCS4 *out)
{
    Py_UCS4 v = 0;
    int k;
    for (k = 0; k < 4; k++) {
        unsigned char c = s[k];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (Py_UCS4)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (Py_UCS4)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (Py_UCS4)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* One character of a string token at d->i (which is not the closing quote):
 * its code point, advancing d->i; -1 with an error set. */
static int next_char(Dec *d, Py_UCS4 *out)
{
    const unsigned char *p = d->p;
    Py_ssize_t i = d->i, n = d->n;
    unsigned char c = p[i];
    if (c == '\\') {
        if (i + 1 >= n)
            { fail(d, "unterminated string"); return -1; }
        switch (p[i + 1]) {
        case '"': *out = '"'; break;
        case '\\': *out = '\\'; break;
        case '/': *out = '/'; break;
        case 'b': *out = '\b'; break;
        case 'f': *out = '\f'; break;
        case 'n': *out = '\n'; break;
        case 'r': *out = '\r'; break;
        case 't': *out = '\t'; break;
        case 'u': {
            Py_UCS4 u, low;
            if (i + 6 > n || hex4(p + i + 2, &u) != 0) {
                d->i = i;
                fail(d, "invalid \\u escape");
                return -1;
            }
            i += 6;
            /* a high surrogate followed by an escaped low one is one character */
            if (u >= 0xd800 && u <= 0xdbff && i + 6 <= n && p[i] == '\\' && p[i + 1] == 'u' &&
                hex4(p + i + 2, &low) == 0 && low >= 0xdc00 && low <= 0xdfff) {
                u = 0x10000 + (((u - 0xd800) << 10) | (low - 0xdc00));
                i += 6;
            }
            *out = u;
            d->i = i;
            return 0;
        }
        default:
            d->i = i;
            fail(d, "invalid escape");
            return -1;
        }
        d->i = i + 2;
        return 0;
    }
    if (c < 0x20) {
        fail(d, "control character in string");
        return -1;
    }
    if (c < 0x80) {
        *out = c;
        d->i = i + 1;
        return 0;
    }
    /* UTF-8, strictly: no overlong forms, no surrogates, nothing past U+10FFFF */
    {
        int len;
        Py_UCS4 cp, min;
        int k;
        if (c >= 0xc2 && c <= 0xdf) {
            len = 2; cp = c & 0x1f; min = 0x80;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3; cp = c & 0x0f; min = 0x800;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4; cp = c & 0x07; min = 0x10000;
        } else {
            { fail(d, "invalid UTF-8"); return -1; }
        }
        if (i + len > n)
            { fail(d, "invalid UTF-8"); return -1; }
        for (k = 1; k < len; k++) {
            unsigned char cc = p[i + k];
            if ((cc & 0xc0) != 0x80)
                { fail(d, "invalid UTF-8"); return -1; }
            cp = (cp << 6) | (cc & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            { fail(d, "invalid UTF-8"); return -1; }
        *out = cp;
        d->i = i + len;
        return 0;
    }
}

/* Copy the plain bytes at the start of src (at most n) into a str's data of
 * the given kind; returns how many.  What ends up in the str is checked:
 * in the copy itself for 1-byte strs, and for wider ones each byte is read
 * once, checked and stored, so a buffer changing meanwhile cannot put a
 * non-plain byte into the str. */
static Py_ssize_t copy_plain(int kind, void *dst, const unsigned char *src, Py_ssize_t n)
{
    Py_ssize_t i = 0, q;
    uint64_t w;
    unsigned char b[8];
    if (kind == PyUnicode_1BYTE_KIND) { /* the run, copied, then checked in the copy */
        i = (Py_ssize_t)nomyo_plain_run(src, (size_t)n);
        memcpy(dst, src, (size_t)i);
        return (Py_ssize_t)nomyo_plain_run(dst, (size_t)i);
    }
    while (i + 8 <= n) {
        memcpy(&w, src + i, 8);
        if (nomyo_special8(w))
            break;
        memcpy(b, &w, 8);
        if (kind == PyUnicode_2BYTE_KIND)
            for (q = 0; q < 8; q++)
                ((Py_UCS2 *)dst)[i + q] = b[q];
        else
            for (q = 0; q < 8; q++)
                ((Py_UCS4 *)dst)[i + q] = b[q];
        i += 8;
    }
    for (; i < n; i++) {
        unsigned char c = src[i];
        if (!NOMYO_PLAIN(c))
            break;
        PyUnicode_WRITE(kind, dst, i, c);
    }
    return i;
}

static PyObject *changed(PyObject *s)
{
    Py_DECREF(s);
    PyErr_SetString(PyExc_ValueError, "invalid JSON: the buffer changed while it was parsed");
    return NULL;
}

/* a string token at d->i (after its opening quote): two passes, one str.
 * Runs of plain ASCII (no escape, no quote) are measured and copied whole. */
static PyObject *parse_string(Dec *d)
{
    const unsigned char *p = d->p;
    Py_ssize_t start = d->i, n = d->n, end, length = 0, k = 0, run;
    Py_UCS4 maxchar = 0, seen = 0, c;
    int simple = 1; /* no escape and no non-ASCII byte: one memcpy */
    PyObject *s;
    int kind;
    void *data;
    for (;;) {
        run = (Py_ssize_t)nomyo_plain_run(p + d->i, (size_t)(n - d->i));
        if (run > 0) {
            d->i += run;
            length += run;
            if (maxchar < 0x7f)
                maxchar = 0x7f; /* any ASCII: the plain runs need no more than that */
        }
        if (d->i >= n)
            return fail(d, "unterminated string");
        if (p[d->i] == '"')
            break;
        simple = 0;
        if (next_char(d, &c) != 0)
            return NULL;
        if (c > maxchar)
            maxchar = c;
        length++;
    }
    end = d->i; /* the closing quote, as the first pass saw it */
    s = PyUnicode_New(length, maxchar);
    if (s == NULL)
        return NULL;
    kind = PyUnicode_KIND(s);
    data = PyUnicode_DATA(s);
    if (simple) {
        /* copied, then checked where no one else can write: in the str */
        memcpy(data, p + start, (size_t)length);
        if ((Py_ssize_t)nomyo_plain_run(data, (size_t)length) != length)
            return changed(s);
        d->i = end + 1;
        return s;
    }
    /* the second pass: bounded by what the first one measured, never by
     * what it finds now */
    d->i = start;
    while (d->i < end) {
        /* the plain run here, but no further than the characters left */
        Py_ssize_t room = end - d->i < length - k ? end - d->i : length - k;
        Py_UCS1 *at = (Py_UCS1 *)data + k * kind;
        run = copy_plain(kind, at, p + d->i, room);
        if (run > 0) {
            if (seen < 0x7f)
                seen = 0x7f;
            k += run;
            d->i += run;
            if (d->i >= end)
                break;
        }
        /* next_char reads each byte once: c is what it checked */
        if (k >= length || next_char(d, &c) != 0 || c > maxchar) {
            PyErr_Clear();
            return changed(s);
        }
        if (c > seen)
            seen = c;
        PyUnicode_WRITE(kind, data, k, c);
        k++;
    }
    /* every character written, the same widest one (a str's kind must be
     * the narrowest that holds it), and the token ends where it did */
    if (d->i != end || k != length || seen != maxchar)
        return changed(s);
    d->i = end + 1; /* the closing quote */
    return s;
}

static PyObject *parse_number(Dec *d)
{
    const unsigned char *p = d->p;
    Py_ssize_t start = d->i, i = d->i, n = d->n, len;
    int is_float = 0;
    char small[64], *text;
    PyObject *result;
    if (i < n && p[i] == '-')
        i++;
    if (i < n && p[i] == '0') {
        i++;
    } else if (i < n && p[i] >= '1' && p[i] <= '9') {
        while (i < n && p[i] >= '0' && p[i] <= '9')
            i++;
    } else {
        return fail(d, "expected a value");
    }
    if (i < n && p[i] == '.' && i + 1 < n && p[i + 1] >= '0' && p[i + 1] <= '9') {
        is_float = 1;
        i++;
        while (i < n && p[i] >= '0' && p[i] <= '9')
            i++;
    }
    if (i < n && (p[i] == 'e' || p[i] == 'E')) {
        Py_ssize_t j = i + 1;
        if (j < n && (p[j] == '+' || p[j] == '-'))
            j++;
        if (j < n && p[j] >= '0' && p[j] <= '9') {
            is_float = 1;
            i = j;
            while (i < n && p[i] >= '0' && p[i] <= '9')
                i++;
        }
    }
    len = i - start;
    text = len < (Py_ssize_t)sizeof small ? small : PyMem_Malloc((size_t)len + 1);
    if (text == NULL)
        return PyErr_NoMemory();
    memcpy(text, p + start, (size_t)len);
    text[len] = '\0';
    if (is_float) {
        double v = PyOS_string_to_double(text, NULL, NULL);
        result = (v == -1.0 && PyErr_Occurred()) ? NULL : PyFloat_FromDouble(v);
    } else {
        result = PyLong_FromString(text, NULL, 10);
    }
    nomyo_zero(text, (size_t)len);
    if (text != small)
        PyMem_Free(text);
    d->i = i;
    return result;
}

static PyObject *parse_object(Dec *d)
{
    PyObject *dict = PyDict_New();
    if (dict == NULL)
        return NULL;
    d->i++; /* { */
    skip_ws(d);
    if (d->i < d->n && d->p[d->i] == '}') {
        d->i++;
        return dict;
    }
    for (;;) {
        PyObject *key, *value;
        int rc;
        skip_ws(d);
        if (d->i >= d->n || d->p[d->i] != '"') {
            Py_DECREF(dict);
            return fail(d, "expected a property name in double quotes");
        }
        d->i++;
        key = parse_string(d);
        if (key == NULL) {
            Py_DECREF(dict);
            return NULL;
        }
        skip_ws(d);
        if (d->i >= d->n || d->p[d->i] != ':') {
            Py_DECREF(key);
            Py_DECREF(dict);
            return fail(d, "expected ':'");
        }
        d->i++;
        skip_ws(d);
        value = parse_value(d);
        if (value == NULL) {
            Py_DECREF(key);
            Py_DECREF(dict);
            return NULL;
        }
        rc = d->unique ? PyDict_Contains(dict, key) : 0;
        if (rc == 1) {
            Py_DECREF(key);
            Py_DECREF(value);
            Py_DECREF(dict);
            return fail(d, "a key appears twice");
        }
        if (rc == 0) /* a repeated key, when allowed: the last value */
            rc = PyDict_SetItem(dict, key, value);
        Py_DECREF(key);
        Py_DECREF(value);
        if (rc != 0) {
            Py_DECREF(dict);
            return NULL;
        }
        skip_ws(d);
        if (d->i < d->n && d->p[d->i] == ',') {
            d->i++;
            continue;
        }
        if (d->i < d->n && d->p[d->i] == '}') {
            d->i++;
            return dict;
        }
        Py_DECREF(dict);
        return fail(d, "expected ',' or '}'");
    }
}

static PyObject *parse_array(Dec *d)
{
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    d->i++; /* [ */
    skip_ws(d);
    if (d->i < d->n && d->p[d->i] == ']') {
        d->i++;
        return list;
    }
    for (;;) {
        PyObject *item;
        int rc;
        skip_ws(d);
        item = parse_value(d);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        rc = PyList_Append(list, item);
        Py_DECREF(item);
        if (rc != 0) {
            Py_DECREF(list);
            return NULL;
        }
        skip_ws(d);
        if (d->i < d->n && d->p[d->i] == ',') {
            d->i++;
            continue;
        }
        if (d->i < d->n && d->p[d->i] == ']') {
            d->i++;
            return list;
        }
        Py_DECREF(list);
        return fail(d, "expected ',' or ']'");
    }
}

static PyObject *parse_value(Dec *d)
{
    PyObject *result;
    unsigned char c;
    if (d->i >= d->n)
        return fail(d, "expected a value");
    c = d->p[d->i];
    switch (c) {
    case '"':
        d->i++;
        return parse_string(d);
    case '{':
    case '[':
        if (d->depth >= NOMYO_MAX_NESTING) {
            PyErr_Format(PyExc_RecursionError,
                         "JSON nested deeper than %d containers at byte %zd", NOMYO_MAX_NESTING,
                         d->i);
            return NULL;
        }
        if (Py_EnterRecursiveCall(" while decoding a JSON document"))
            return NULL;
        d->depth++;
        result = c == '{' ? parse_object(d) : parse_array(d);
        d->depth--;
        Py_LeaveRecursiveCall();
        return result;
    case 't':
        if (literal(d, "true"))
            Py_RETURN_TRUE;
        break;
    case 'f':
        if (literal(d, "false"))
            Py_RETURN_FALSE;
        break;
    case 'n':
        if (literal(d, "null"))
            Py_RETURN_NONE;
        break;
    case 'N':
        if (literal(d, "NaN"))
            return PyFloat_FromDouble(Py_NAN);
        break;
    case 'I':
        if (literal(d, "Infinity"))
            return PyFloat_FromDouble(Py_HUGE_VAL);
        break;
    case '-':
        if (literal(d, "-Infinity"))
            return PyFloat_FromDouble(-Py_HUGE_VAL);
        return parse_number(d);
    default:
        if (c >= '0' && c <= '9')
            return parse_number(d);
    }
    return fail(d, "expected a value");
}

/* json_parse(buffer, unique_keys=False) -> the JSON value in a UTF-8 buffer */
PyObject *nomyo_json_parse(PyObject *module, PyObject *args)
{
    PyObject *source;
    int unique = 0;
    Py_buffer view;
    Dec d;
    PyObject *result;
    (void)module;
    if (!PyArg_ParseTuple(args, "O|p", &source, &unique))
        return NULL;
    if (PyObject_GetBuffer(source, &view, PyBUF_C_CONTIGUOUS) != 0)
        return NULL;
    d.p = view.buf;
    d.n = view.len;
    d.i = 0;
    d.unique = unique;
    d.depth = 0;
    skip_ws(&d);
    result = parse_value(&d);
    if (result != NULL) {
        skip_ws(&d);
        if (d.i != d.n) {
            Py_DECREF(result);
            result = fail(&d, "extra data");
        }
    }
    PyBuffer_Release(&view);
    return result;
}
