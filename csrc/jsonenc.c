/*
 * JSON straight into secure memory, for the request plaintext.
 *
 * json.dumps builds the text as Python str objects: an escaped copy of every
 * string and the joined result, freed (never zeroed) by the allocator.  Here
 * the same text is written in two passes over the object, with no copy in
 * between: json_size(obj) counts its bytes, the caller allocates a buffer of
 * exactly that size (a SecureBuffer), and json_into(obj, buffer) writes it.
 * The output is byte for byte what
 *
 *     json.dumps(obj, separators=(",", ":"), ensure_ascii=False,
 *                allow_nan=False).encode("utf-8")
 *
 * gives, with the same errors: TypeError for what JSON cannot hold,
 * ValueError for NaN and infinities, circular references and (as the
 * UTF-8 encoding would) lone surrogates, RecursionError for absurd nesting.
 * The only transient objects are the str of each int and float, zeroed
 * before they are freed.
 *
 * Both passes run with the GIL held and call no Python code for dict, list,
 * tuple, str, int and float objects (str, int and float subclasses are read
 * as json's C encoder reads them).  As json does, a dict subclass is read
 * through its items() and a list or tuple subclass through its __iter__
 * (both only when the container is not empty): Python code, which can
 * change or free anything.  So every object is held by an owned reference
 * while it is written (never a borrowed pointer into a container that code
 * could change), and the sizes of exact lists are read again at each item.
 * If the object changes between the two passes (that code, or another
 * thread), the second pass never writes past the size the first one
 * measured: json_into stops and raises ValueError as soon as the text
 * differs in length.  Nesting deeper than NOMYO_MAX_NESTING containers
 * (csrc/nesting.h) is a RecursionError, as in the decoder and wipe().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "jsonenc.h"
#include "jsonscan.h"
#include "nesting.h"

typedef struct {
    unsigned char *out; /* NULL while only counting */
    Py_ssize_t len;     /* bytes counted or written so far */
    Py_ssize_t cap;     /* the buffer's size when writing */
    PyObject *path[NOMYO_MAX_NESTING]; /* the containers being written, for cycles */
    int depth;
} Enc;

static int changed(void)
{
    PyErr_SetString(PyExc_ValueError, "the object changed while it was serialized");
    return -1;
}

static int put(Enc *e, const void *src, Py_ssize_t n)
{
    if (e->out != NULL) {
        if (n > e->cap - e->len)
            return changed();
        memcpy(e->out + e->len, src, (size_t)n);
    }
    e->len += n;
    return 0;
}

static int put1(Enc *e, unsigned char c)
{
    return put(e, &c, 1);
}

/* the escape of an ASCII character JSON does not allow raw in a string */
static int put_escape(Enc *e, Py_UCS4 c)
{
    static const char hex[] = "0123456789abcdef";
    char buf[6] = {'\\', 0, 0, 0, 0, 0};
    switch (c) {
    case '"': buf[1] = '"'; return put(e, buf, 2);
    case '\\': buf[1] = '\\'; return put(e, buf, 2);
    case '\b': buf[1] = 'b'; return put(e, buf, 2);
    case '\f': buf[1] = 'f'; return put(e, buf, 2);
    case '\n': buf[1] = 'n'; return put(e, buf, 2);
    case '\r': buf[1] = 'r'; return put(e, buf, 2);
    case '\t': buf[1] = 't'; return put(e, buf, 2);
    default:
        buf[1] = 'u';
        buf[2] = '0';
        buf[3] = '0';
        buf[4] = hex[(c >> 4) & 0xf];
        buf[5] = hex[c & 0xf];
        return put(e, buf, 6);
    }
}

#define NEEDS_ESCAPE(c) ((c) < 0x20 || (c) == '"' || (c) == '\\')

static int put_str(Enc *e, PyObject *s)
{
    Py_ssize_t i, n = PyUnicode_GET_LENGTH(s);
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    if (put1(e, '"') != 0)
        return -1;
    if (PyUnicode_IS_ASCII(s)) {
        /* copy the runs between escapes as they are */
        const unsigned char *p = data;
        i = 0;
        while (i < n) {
            Py_ssize_t run = (Py_ssize_t)nomyo_plain_run(p + i, (size_t)(n - i));
            if (put(e, p + i, run) != 0)
                return -1;
            i += run;
            if (i < n) { /* ASCII, so a quote, a backslash or a control character */
                if (put_escape(e, p[i]) != 0)
                    return -1;
                i++;
            }
        }
        return put1(e, '"');
    }
    for (i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        unsigned char u[4];
        if (c < 0x80) {
            if (NEEDS_ESCAPE(c) ? put_escape(e, c) : put1(e, (unsigned char)c))
                return -1;
            continue;
        }
        if (c < 0x800) {
            u[0] = (unsigned char)(0xc0 | (c >> 6));
            u[1] = (unsigned char)(0x80 | (c & 0x3f));
            if (put(e, u, 2) != 0)
                return -1;
        } else if (c >= 0xd800 && c <= 0xdfff) {
            PyErr_SetString(PyExc_ValueError,
                            "a string holds a lone surrogate, which UTF-8 cannot encode");
            return -1;
        } else if (c < 0x10000) {
            u[0] = (unsigned char)(0xe0 | (c >> 12));
            u[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3f));
            u[2] = (unsigned char)(0x80 | (c & 0x3f));
            if (put(e, u, 3) != 0)
                return -1;
        } else {
            u[0] = (unsigned char)(0xf0 | (c >> 18));
            u[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3f));
            u[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3f));
            u[3] = (unsigned char)(0x80 | (c & 0x3f));
            if (put(e, u, 4) != 0)
                return -1;
        }
    }
    return put1(e, '"');
}

/* a number's text (int.__repr__ / float.__repr__, as json uses), zeroed
 * before it is freed; `quoted` for a dict key */
static int put_number(Enc *e, PyObject *num, int quoted)
{
    PyObject *text;
    int rc;
    if (PyFloat_Check(num)) {
        double d = PyFloat_AS_DOUBLE(num);
        if (!Py_IS_FINITE(d)) {
            PyErr_SetString(PyExc_ValueError, "Out of range float values are not JSON compliant");
            return -1;
        }
        text = PyFloat_Type.tp_repr(num);
    } else {
        text = PyLong_Type.tp_repr(num);
    }
    if (text == NULL)
        return -1;
    rc = (quoted && put1(e, '"')) || put(e, PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text)) ||
         (quoted && put1(e, '"'));
    /* ASCII digits; one-character strs are shared singletons: leave those */
    if (Py_REFCNT(text) == 1 && PyUnicode_GET_LENGTH(text) > 1 && !PyUnicode_CHECK_INTERNED(text))
        memset(PyUnicode_DATA(text), 0, (size_t)PyUnicode_GET_LENGTH(text));
    Py_DECREF(text);
    return rc ? -1 : 0;
}

static int put_value(Enc *e, PyObject *obj);

static int enter(Enc *e, PyObject *container)
{
    int i;
    for (i = 0; i < e->depth; i++) {
        if (e->path[i] == container) {
            PyErr_SetString(PyExc_ValueError, "Circular reference detected");
            return -1;
        }
    }
    if (e->depth >= NOMYO_MAX_NESTING) {
        PyErr_SetString(PyExc_RecursionError, "maximum nesting depth exceeded while encoding JSON");
        return -1;
    }
    if (Py_EnterRecursiveCall(" while encoding a JSON object"))
        return -1;
    e->path[e->depth++] = container;
    return 0;
}

static void leave(Enc *e)
{
    e->depth--;
    Py_LeaveRecursiveCall();
}

static int put_key(Enc *e, PyObject *key)
{
    if (PyUnicode_Check(key))
        return put_str(e, key);
    if (key == Py_True)
        return put(e, "\"true\"", 6);
    if (key == Py_False)
        return put(e, "\"false\"", 7);
    if (key == Py_None)
        return put(e, "\"null\"", 6);
    if (PyLong_Check(key) || PyFloat_Check(key))
        return put_number(e, key, 1);
    PyErr_Format(PyExc_TypeError, "keys must be str, int, float, bool or None, not %.100s",
                 Py_TYPE(key)->tp_name);
    return -1;
}

static int put_pair(Enc *e, PyObject *key, PyObject *value, int first)
{
    if ((!first && put1(e, ',')) || put_key(e, key) || put1(e, ':') || put_value(e, value))
        return -1;
    return 0;
}

/* a pair from a dict subclass's items(): `item` is owned by the caller */
static int put_item(Enc *e, PyObject *item, int first)
{
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
        PyErr_SetString(PyExc_ValueError, "items must return tuples of length 2");
        return -1;
    }
    /* a tuple cannot change: it keeps its key and value alive */
    return put_pair(e, PyTuple_GET_ITEM(item, 0), PyTuple_GET_ITEM(item, 1), first);
}

static int put_dict(Enc *e, PyObject *dict)
{
    int rc = -1, first = 1;
    if (enter(e, dict) != 0)
        return -1;
    if (PyDict_GET_SIZE(dict) == 0) { /* as json: "{}", without calling items() */
        rc = put(e, "{}", 2);
        goto done;
    }
    if (put1(e, '{') != 0)
        goto done;
    if (PyDict_CheckExact(dict)) {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        /* PyDict_Next stays in bounds if nested code changes the dict */
        while (PyDict_Next(dict, &pos, &key, &value)) {
            int failed;
            Py_INCREF(key);
            Py_INCREF(value);
            failed = put_pair(e, key, value, first);
            Py_DECREF(key);
            Py_DECREF(value);
            if (failed)
                goto done;
            first = 0;
        }
    } else { /* a subclass: its items(), as json reads it */
        PyObject *items, *item;
        Py_ssize_t i;
        /* the list items() returned, which its owner may also hold and change */
        items = PyMapping_Items(dict);
        if (items == NULL)
            goto done;
        for (i = 0; i < PyList_GET_SIZE(items); i++) {
            int failed;
            item = PyList_GET_ITEM(items, i);
            Py_INCREF(item);
            failed = put_item(e, item, first);
            Py_DECREF(item);
            if (failed) {
                Py_DECREF(items);
                goto done;
            }
            first = 0;
        }
        Py_DECREF(items);
    }
    rc = put1(e, '}');
done:
    leave(e);
    return rc;
}

/* the items of an exact list or tuple, or of the list `seq` was turned into;
 * `seq` is owned by the caller, each item held while it is written */
static int put_items(Enc *e, PyObject *seq)
{
    Py_ssize_t i;
    if (put1(e, '[') != 0)
        return -1;
    /* the size is read again each time: a list is not copied first, and
     * code run by a nested subclass may shorten it */
    for (i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        int failed;
        Py_INCREF(item);
        failed = (i > 0 && put1(e, ',')) || put_value(e, item);
        Py_DECREF(item);
        if (failed)
            return -1;
    }
    return put1(e, ']');
}

static int put_array(Enc *e, PyObject *seq)
{
    PyObject *items;
    int rc;
    if (PyList_CheckExact(seq) || PyTuple_CheckExact(seq)) {
        items = seq;
        Py_INCREF(items);
    } else {
        /* a subclass: what iterating it gives, as json reads it (a new list
         * no other code holds) */
        items = PySequence_Fast(seq, "_iterencode_list needs a sequence");
        if (items == NULL)
            return -1;
    }
    if (enter(e, seq) != 0) {
        Py_DECREF(items);
        return -1;
    }
    if (PySequence_Fast_GET_SIZE(items) == 0)
        rc = put(e, "[]", 2);
    else
        rc = put_items(e, items);
    leave(e);
    Py_DECREF(items);
    return rc;
}

static int put_value(Enc *e, PyObject *obj)
{
    if (obj == Py_None)
        return put(e, "null", 4);
    if (obj == Py_True)
        return put(e, "true", 4);
    if (obj == Py_False)
        return put(e, "false", 5);
    if (PyUnicode_Check(obj))
        return put_str(e, obj);
    if (PyLong_Check(obj) || PyFloat_Check(obj))
        return put_number(e, obj, 0);
    if (PyList_Check(obj) || PyTuple_Check(obj))
        return put_array(e, obj);
    if (PyDict_Check(obj))
        return put_dict(e, obj);
    PyErr_Format(PyExc_TypeError, "Object of type %.100s is not JSON serializable",
                 Py_TYPE(obj)->tp_name);
    return -1;
}

/* json_size(obj) -> the length of its compact UTF-8 JSON */
PyObject *nomyo_json_size(PyObject *module, PyObject *obj)
{
    Enc e;
    (void)module;
    e.out = NULL;
    e.len = 0;
    e.cap = 0;
    e.depth = 0;
    if (put_value(&e, obj) != 0)
        return NULL;
    return PyLong_FromSsize_t(e.len);
}

/* json_into(obj, buffer) -> bytes written: the JSON written into a writable
 * buffer of exactly json_size(obj) bytes */
PyObject *nomyo_json_into(PyObject *module, PyObject *args)
{
    PyObject *obj, *target;
    Py_buffer view;
    Enc e;
    int rc;
    (void)module;
    if (!PyArg_ParseTuple(args, "OO", &obj, &target))
        return NULL;
    if (PyObject_GetBuffer(target, &view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) != 0)
        return NULL;
    e.out = view.buf;
    e.len = 0;
    e.cap = view.len;
    e.depth = 0;
    rc = put_value(&e, obj);
    if (rc == 0 && e.len != e.cap)
        rc = changed();
    PyBuffer_Release(&view);
    if (rc != 0)
        return NULL;
    return PyLong_FromSsize_t(e.len);
}
