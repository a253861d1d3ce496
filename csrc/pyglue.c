/*
 * The Python side of the secure memory, compiled into the same cffi module:
 *
 * - Region: the type that owns one nomyo_region and exports it through the
 *   buffer protocol.  It counts its exports, so close() can wipe at once and
 *   still never unmap (and let the address be reused for another secret)
 *   while a memoryview of it exists: the mapping goes when the last view is
 *   released.  Nothing else is exposed: no sequence, no bytes conversion.
 * - wipe_object(): zero in place the contents of str / bytes / bytearray /
 *   memoryview / Region, and of the values of dict / list / tuple, skipping
 *   interned, cached and shared objects.
 *
 * These functions need the GIL; cffi releases it around calls, so the one
 * entry point called through cffi (nomyo_py_register) takes it back.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "nesting.h"
#include "securemem.h"

typedef struct {
    PyObject_HEAD
    nomyo_region *region; /* NULL once freed */
    Py_ssize_t exports;
    int closed;
} RegionObject;

static void region_release_memory(RegionObject *self)
{
    nomyo_region *r = self->region;
    self->region = NULL;
    if (r != NULL) {
        Py_BEGIN_ALLOW_THREADS
        nomyo_free(r);
        Py_END_ALLOW_THREADS
    }
}

static PyObject *region_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Py_ssize_t size;
    int flags = 0;
    RegionObject *self;
    nomyo_region *r;
    static char *kwlist[] = {"size", "flags", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n|i", kwlist, &size, &flags))
        return NULL;
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "size must be >= 0");
        return NULL;
    }
    self = (RegionObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    r = nomyo_alloc((size_t)size, flags);
    Py_END_ALLOW_THREADS
    if (r == NULL) {
        Py_DECREF(self);
        if (errno == ENOMEM)
            return PyErr_NoMemory();
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->region = r;
    return (PyObject *)self;
}

static void region_dealloc(RegionObject *self)
{
    region_release_memory(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int region_getbuffer(RegionObject *self, Py_buffer *view, int flags)
{
    if (self->closed || self->region == NULL) {
        view->obj = NULL;
        PyErr_SetString(PyExc_ValueError, "operation on a closed SecureBuffer");
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->region->data,
                          (Py_ssize_t)self->region->size, 0, flags) != 0)
        return -1;
    self->exports++;
    return 0;
}

static void region_releasebuffer(RegionObject *self, Py_buffer *view)
{
    (void)view;
    self->exports--;
    if (self->closed && self->exports == 0)
        region_release_memory(self);
}

static PyObject *closed_error(void)
{
    PyErr_SetString(PyExc_ValueError, "operation on a closed SecureBuffer");
    return NULL;
}

static PyObject *region_wipe(RegionObject *self, PyObject *unused)
{
    (void)unused;
    if (self->closed || self->region == NULL)
        return closed_error();
    nomyo_zero(self->region->data, self->region->size);
    Py_RETURN_NONE;
}

static PyObject *region_close(RegionObject *self, PyObject *unused)
{
    (void)unused;
    if (self->closed)
        Py_RETURN_NONE;
    self->closed = 1;
    if (self->region != NULL) {
        if (self->exports == 0)
            region_release_memory(self); /* nomyo_free zeroes the pages */
        else
            nomyo_zero(self->region->data, self->region->size); /* views stay */
    }
    Py_RETURN_NONE;
}

static PyObject *region_fill_random(RegionObject *self, PyObject *unused)
{
    int rc;
    (void)unused;
    if (self->closed || self->region == NULL)
        return closed_error();
    Py_BEGIN_ALLOW_THREADS
    rc = nomyo_random(self->region->data, self->region->size);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *region_get_address(RegionObject *self, void *closure)
{
    (void)closure;
    if (self->closed || self->region == NULL)
        return closed_error();
    return PyLong_FromVoidPtr(self->region->data);
}

static PyObject *region_get_status(RegionObject *self, void *closure)
{
    int status;
    (void)closure;
    if (self->region == NULL)
        return PyLong_FromLong(0);
    status = self->region->status;
    if (nomyo_forked(self->region))
        status &= ~NOMYO_S_LOCKED; /* a child does not inherit mlock */
    return PyLong_FromLong(status);
}

static PyObject *region_get_lock_errno(RegionObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromLong(self->region != NULL ? self->region->lock_errno : 0);
}

static PyObject *region_get_closed(RegionObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->closed);
}

static PyObject *region_get_exports(RegionObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(self->exports);
}

static PyObject *region_get_mapping(RegionObject *self, void *closure)
{
    /* (start, end) of the data pages, for finding them in /proc/self/smaps */
    nomyo_region *r = self->region;
    size_t ps = nomyo_page_size();
    (void)closure;
    if (self->closed || r == NULL)
        return closed_error();
    return Py_BuildValue("(NN)", PyLong_FromVoidPtr(r->base + ps),
                         PyLong_FromVoidPtr(r->base + r->total - ps));
}

static Py_ssize_t region_length(RegionObject *self)
{
    if (self->closed || self->region == NULL) {
        closed_error();
        return -1;
    }
    return (Py_ssize_t)self->region->size;
}

static PyMethodDef region_methods[] = {
    {"_wipe", (PyCFunction)region_wipe, METH_NOARGS, "Zero the data in place."},
    {"_close", (PyCFunction)region_close, METH_NOARGS,
     "Zero now; unmap now, or when the last exported view is released."},
    {"_fill_random", (PyCFunction)region_fill_random, METH_NOARGS,
     "Fill the data from the kernel's CSPRNG."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef region_getset[] = {
    {"_address", (getter)region_get_address, NULL, NULL, NULL},
    {"_status", (getter)region_get_status, NULL, NULL, NULL},
    {"_lock_errno", (getter)region_get_lock_errno, NULL, NULL, NULL},
    {"_closed", (getter)region_get_closed, NULL, NULL, NULL},
    {"_exports", (getter)region_get_exports, NULL, NULL, NULL},
    {"_mapping", (getter)region_get_mapping, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods region_as_sequence = {
    .sq_length = (lenfunc)region_length,
};

static PyBufferProcs region_as_buffer = {
    .bf_getbuffer = (getbufferproc)region_getbuffer,
    .bf_releasebuffer = (releasebufferproc)region_releasebuffer,
};

static PyTypeObject RegionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "nomyo._native.Region",
    .tp_basicsize = sizeof(RegionObject),
    .tp_dealloc = (destructor)region_dealloc,
    .tp_as_sequence = &region_as_sequence,
    .tp_as_buffer = &region_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Guarded, locked memory exported through the buffer protocol.",
    .tp_methods = region_methods,
    .tp_getset = region_getset,
    .tp_new = region_new,
};

/* ---- wiping Python objects in place ---- */

static int wipe_str(PyObject *op)
{
    Py_ssize_t len = PyUnicode_GET_LENGTH(op);
    if (PyUnicode_CHECK_INTERNED(op) || len <= 1 || !PyUnicode_IS_COMPACT(op))
        return 0; /* shared by the interpreter, or a cached 1-character string */
    if (!PyUnicode_IS_COMPACT_ASCII(op)) {
        PyCompactUnicodeObject *c = (PyCompactUnicodeObject *)op;
        if (c->utf8 != NULL && c->utf8_length > 0)
            nomyo_zero(c->utf8, (size_t)c->utf8_length);
    }
    nomyo_zero(PyUnicode_DATA(op), (size_t)len * PyUnicode_KIND(op));
    ((PyASCIIObject *)op)->hash = -1;
    return 1;
}

static int wipe_bytes(PyObject *op)
{
    Py_ssize_t len = PyBytes_GET_SIZE(op);
    if (len <= 1)
        return 0; /* the empty and 1-byte singletons */
    nomyo_zero(PyBytes_AS_STRING(op), (size_t)len);
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
    ((PyBytesObject *)op)->ob_shash = -1;
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
    return 1;
}

static int wipe_bytearray(PyObject *op)
{
    PyByteArrayObject *b = (PyByteArrayObject *)op;
    if (b->ob_bytes == NULL || b->ob_alloc == 0)
        return 0;
    /* the whole allocation: earlier, longer contents may linger past the end */
    nomyo_zero(b->ob_bytes, (size_t)b->ob_alloc);
    return 1;
}

static int wipe_buffer(PyObject *op)
{
    Py_buffer view;
    if (PyObject_GetBuffer(op, &view, PyBUF_WRITABLE | PyBUF_ANY_CONTIGUOUS) != 0) {
        PyErr_Clear(); /* read-only or not contiguous: not ours to change */
        return 0;
    }
    nomyo_zero(view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return 1;
}

/* Nothing here runs Python code (only exact-type reads and C buffer
 * exports), so the borrowed references met on the way stay valid.
 * `depth` counts the containers around op; a container deeper than
 * NOMYO_MAX_NESTING (csrc/nesting.h, the codec's limit too) is skipped and
 * noted in *too_deep, and the walk goes on with the values after it. */
static Py_ssize_t wipe_any(PyObject *op, Py_ssize_t max_refs, int depth, int *too_deep);

static Py_ssize_t wipe_items(PyObject *const *items, Py_ssize_t n, int depth, int *too_deep)
{
    Py_ssize_t total = 0, i;
    for (i = 0; i < n; i++)
        total += wipe_any(items[i], 1, depth + 1, too_deep);
    return total;
}

/* max_refs: how many references an object held only by its owner has here */
static Py_ssize_t wipe_any(PyObject *op, Py_ssize_t max_refs, int depth, int *too_deep)
{
    if (PyObject_TypeCheck(op, &RegionType)) {
        RegionObject *r = (RegionObject *)op;
        if (r->closed || r->region == NULL)
            return 0;
        nomyo_zero(r->region->data, r->region->size);
        return 1;
    }
    if (PyByteArray_Check(op))
        return wipe_bytearray(op);
    if (PyMemoryView_Check(op))
        return wipe_buffer(op);
    if (Py_REFCNT(op) > max_refs)
        return 0; /* someone else holds it: not ours to wipe */
    if (PyUnicode_Check(op))
        return wipe_str(op);
    if (PyBytes_Check(op))
        return wipe_bytes(op);
    if (!PyDict_Check(op) && !PyList_Check(op) && !PyTuple_Check(op))
        return 0;
    if (depth >= NOMYO_MAX_NESTING) {
        *too_deep = 1;
        return 0;
    }
    if (PyDict_Check(op)) {
        Py_ssize_t pos = 0, total = 0;
        PyObject *key, *value;
        while (PyDict_Next(op, &pos, &key, &value))
            total += wipe_any(value, 1, depth + 1, too_deep);
        return total;
    }
    if (PyList_Check(op))
        return wipe_items(((PyListObject *)op)->ob_item, PyList_GET_SIZE(op), depth, too_deep);
    return wipe_items(((PyTupleObject *)op)->ob_item, PyTuple_GET_SIZE(op), depth, too_deep);
}

static PyObject *py_wipe_object(PyObject *module, PyObject *args)
{
    PyObject *op;
    Py_ssize_t max_refs, n;
    int too_deep = 0;
    (void)module;
    if (!PyArg_ParseTuple(args, "On", &op, &max_refs))
        return NULL;
    n = wipe_any(op, max_refs, 0, &too_deep);
    if (n > 0)
        nomyo_scrub_stack(); /* and what copying the objects left in registers and below */
    if (too_deep) {
        PyErr_Format(PyExc_RecursionError,
                     "wipe: values nested deeper than %d containers were left as they are "
                     "(all others were wiped)",
                     NOMYO_MAX_NESTING);
        return NULL;
    }
    return PyLong_FromSsize_t(n);
}

static PyObject *py_refcount(PyObject *module, PyObject *args)
{
    /* same signature as wipe_object, so callers can mirror its call shape */
    PyObject *op;
    Py_ssize_t unused;
    (void)module;
    if (!PyArg_ParseTuple(args, "On", &op, &unused))
        return NULL;
    return PyLong_FromSsize_t(Py_REFCNT(op));
}

long long nomyo_b64_decode(const char *in, size_t n, unsigned char *out);
size_t nomyo_b64_decoded_max(size_t n);

/* b64decode_str(text, reserve) -> bytearray: strict base64 read straight out
 * of an ASCII str (no encoded copy of a multi-megabyte field), into a
 * bytearray with `reserve` bytes of spare capacity (room for a GCM tag). */
static PyObject *py_b64decode_str(PyObject *module, PyObject *args)
{
    PyObject *text, *out;
    Py_ssize_t reserve, n;
    long long written;
    (void)module;
    if (!PyArg_ParseTuple(args, "Un", &text, &reserve))
        return NULL;
    if (!PyUnicode_IS_COMPACT_ASCII(text) || reserve < 0) {
        PyErr_SetString(PyExc_ValueError, "not strict standard base64");
        return NULL;
    }
    n = PyUnicode_GET_LENGTH(text);
    out = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)nomyo_b64_decoded_max((size_t)n) + reserve);
    if (out == NULL)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    written = nomyo_b64_decode((const char *)PyUnicode_DATA(text), (size_t)n,
                               (unsigned char *)PyByteArray_AS_STRING(out));
    Py_END_ALLOW_THREADS
    if (written < 0) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_ValueError, "not strict standard base64");
        return NULL;
    }
    /* shrinking keeps the allocation, so `reserve` bytes can be appended in place */
    if (PyByteArray_Resize(out, (Py_ssize_t)written) != 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

size_t nomyo_b64_encoded_len(size_t n);
void nomyo_b64_encode(const unsigned char *in, size_t n, char *out);

/* pack(pieces) -> bytes: pieces are bytes (copied as they are) or 1-tuples
 * holding a bytes-like object (written as base64); the result is allocated
 * once, so a multi-megabyte ciphertext is never base64-encoded into a
 * separate object and then copied again by a join. */
static PyObject *py_pack(PyObject *module, PyObject *pieces)
{
    PyObject *seq, *out = NULL;
    Py_ssize_t i, n, total = 0;
    Py_buffer *views;
    char *dst, *as_base64;
    (void)module;
    /* a tuple of our own: the pieces stay alive even if getting a buffer runs
     * Python code (a __buffer__ method, 3.12+) that changes the caller's list */
    seq = PySequence_Tuple(pieces);
    if (seq == NULL)
        return NULL;
    n = PySequence_Fast_GET_SIZE(seq);
    views = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Py_buffer));
    as_base64 = PyMem_Calloc((size_t)(n ? n : 1), 1);
    if (views == NULL || as_base64 == NULL) {
        PyMem_Free(views);
        PyMem_Free(as_base64);
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        int encoded = PyTuple_Check(item) && PyTuple_GET_SIZE(item) == 1;
        PyObject *source = encoded ? PyTuple_GET_ITEM(item, 0) : item;
        if (!encoded && !PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "pack() pieces are bytes or (buffer,)");
            goto done;
        }
        if (PyObject_GetBuffer(source, &views[i], PyBUF_C_CONTIGUOUS) != 0)
            goto done;
        total += encoded ? (Py_ssize_t)nomyo_b64_encoded_len((size_t)views[i].len) : views[i].len;
        as_base64[i] = (char)encoded;
    }
    out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        goto done;
    dst = PyBytes_AS_STRING(out);
    for (i = 0; i < n; i++) {
        if (as_base64[i]) {
            nomyo_b64_encode(views[i].buf, (size_t)views[i].len, dst);
            dst += nomyo_b64_encoded_len((size_t)views[i].len);
        } else {
            memcpy(dst, views[i].buf, (size_t)views[i].len);
            dst += views[i].len;
        }
    }
done:
    for (i = 0; i < n; i++)
        if (views[i].obj != NULL)
            PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyMem_Free(as_base64);
    Py_DECREF(seq);
    return out;
}

/* csrc/jsonenc.c */
PyObject *nomyo_json_size(PyObject *module, PyObject *obj);
PyObject *nomyo_json_into(PyObject *module, PyObject *args);
/* csrc/jsondec.c */
PyObject *nomyo_json_parse(PyObject *module, PyObject *args);

static PyMethodDef glue_functions[] = {
    {"json_size", nomyo_json_size, METH_O, "json_size(obj) -> bytes of its compact UTF-8 JSON"},
    {"json_parse", nomyo_json_parse, METH_VARARGS,
     "json_parse(buffer, unique_keys=False) -> the JSON value in UTF-8"},
    {"json_into", nomyo_json_into, METH_VARARGS,
     "json_into(obj, buffer) -> bytes written (exactly json_size(obj))"},
    {"pack", py_pack, METH_O, "pack(pieces) -> bytes; (buffer,) pieces as base64"},
    {"b64decode_str", py_b64decode_str, METH_VARARGS,
     "b64decode_str(text, reserve) -> bytearray, strict standard base64"},
    {"wipe_object", py_wipe_object, METH_VARARGS,
     "wipe_object(obj, max_refs) -> number of objects zeroed in place"},
    {"refcount", py_refcount, METH_VARARGS,
     "refcount(obj, max_refs) -> the reference count as wipe_object sees it"},
    {NULL, NULL, 0, NULL},
};

/* Put Region, wipe_object and refcount into the dict at `namespace`
 * (the address of a dict, from id()).  Returns 0, or -1 with a Python
 * exception set (and printed, since cffi cannot carry it). */
int nomyo_py_register(void *namespace)
{
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *ns = (PyObject *)namespace;
    PyMethodDef *def;
    int rc = -1;
    if (!PyDict_Check(ns)) {
        PyErr_SetString(PyExc_TypeError, "namespace must be a dict");
        goto done;
    }
    if (PyType_Ready(&RegionType) != 0)
        goto done;
    if (PyDict_SetItemString(ns, "Region", (PyObject *)&RegionType) != 0)
        goto done;
    for (def = glue_functions; def->ml_name != NULL; def++) {
        PyObject *fn = PyCFunction_New(def, NULL);
        if (fn == NULL)
            goto done;
        if (PyDict_SetItemString(ns, def->ml_name, fn) != 0) {
            Py_DECREF(fn);
            goto done;
        }
        Py_DECREF(fn);
    }
    rc = 0;
done:
    if (rc != 0)
        PyErr_Print();
    PyGILState_Release(gil);
    return rc;
}
