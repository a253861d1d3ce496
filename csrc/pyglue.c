/*
 * nomyo._pyglue: everything of the native layer that creates or touches
 * Python objects (see the drawing in pyglue.h):
 *
 * - Region: the type that exports one region's memory through the buffer
 *   protocol.  It does not allocate: it holds a buffer of the memory and
 *   the object whose last reference frees it (cffi objects nomyo._native
 *   makes: ffi.buffer and ffi.gc).  It counts its
 *   own exports, so close() can wipe at once and still never let the memory
 *   go (and the address be reused for another secret) while a memoryview of
 *   it exists: the memory goes when the last view is released.  Nothing
 *   else is exposed: no sequence, no bytes conversion.
 * - wipe_object(): zero in place the contents of str / bytes / bytearray /
 *   memoryview / Region, and of the values of dict / list / tuple, skipping
 *   interned, cached and shared objects.
 * - the JSON codec (jsonenc.c, jsondec.c) and the base64 glue (b64.c).
 */
#include "pyglue.h"

#include <errno.h>

#include "b64.h"
#include "jsondec.h"
#include "jsonenc.h"
#include "nesting.h"
#include "primitives.h"
#ifdef NOMYO_SANITIZE_BUILD
#include "sanitize_selftest.h"
#endif

typedef struct {
    PyObject_HEAD
    Py_buffer memory; /* the region's memory; memory.obj is NULL once let go */
    PyObject *owner;  /* its last reference frees the memory; NULL once let go */
    Py_ssize_t exports;
    int closed;
} RegionObject;

/* let go of the memory: the owner's last reference frees the region
 * (nomyo_free zeroes it; cffi calls it without the GIL) */
static void region_release_memory(RegionObject *self)
{
    Py_buffer memory = self->memory;
    PyObject *owner = self->owner;
    self->memory.obj = NULL;
    self->memory.buf = NULL;
    self->memory.len = 0;
    self->owner = NULL;
    if (memory.obj != NULL)
        PyBuffer_Release(&memory);
    Py_XDECREF(owner);
}

static PyObject *region_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *memory, *owner;
    RegionObject *self;
    static char *kwlist[] = {"memory", "owner", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO", kwlist, &memory, &owner))
        return NULL;
    self = (RegionObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (PyObject_GetBuffer(memory, &self->memory, PyBUF_WRITABLE) != 0) {
        self->memory.obj = NULL;
        Py_DECREF(self);
        return NULL;
    }
    Py_INCREF(owner);
    self->owner = owner;
    return (PyObject *)self;
}

static void region_dealloc(RegionObject *self)
{
    region_release_memory(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int region_open(RegionObject *self)
{
    return !self->closed && self->memory.obj != NULL;
}

static int region_getbuffer(RegionObject *self, Py_buffer *view, int flags)
{
    if (!region_open(self)) {
        view->obj = NULL;
        PyErr_SetString(PyExc_ValueError, "operation on a closed SecureBuffer");
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->memory.buf, self->memory.len, 0,
                          flags) != 0)
        return -1;
    self->exports++;
    return 0;
}

/* one export fewer; the memory goes with the last one after a close() */
static void region_unpin(RegionObject *self)
{
    self->exports--;
    if (self->closed && self->exports == 0)
        region_release_memory(self);
}

static void region_releasebuffer(RegionObject *self, Py_buffer *view)
{
    (void)view;
    region_unpin(self);
}

static PyObject *closed_error(void)
{
    PyErr_SetString(PyExc_ValueError, "operation on a closed SecureBuffer");
    return NULL;
}

static PyObject *region_wipe(RegionObject *self, PyObject *unused)
{
    (void)unused;
    if (!region_open(self))
        return closed_error();
    nomyo_zero(self->memory.buf, (size_t)self->memory.len);
    Py_RETURN_NONE;
}

static PyObject *region_close(RegionObject *self, PyObject *unused)
{
    (void)unused;
    if (self->closed)
        Py_RETURN_NONE;
    self->closed = 1;
    if (self->memory.obj != NULL) {
        if (self->exports == 0)
            region_release_memory(self); /* nomyo_free zeroes the pages */
        else
            nomyo_zero(self->memory.buf, (size_t)self->memory.len); /* views stay */
    }
    Py_RETURN_NONE;
}

static PyObject *region_fill_random(RegionObject *self, PyObject *unused)
{
    int rc, saved = 0;
    void *buf;
    size_t len;
    (void)unused;
    if (!region_open(self))
        return closed_error();
    buf = self->memory.buf;
    len = (size_t)self->memory.len;
    /* pinned while the GIL is released: a close() from another thread
     * meanwhile zeroes, but the memory stays ours until region_unpin */
    self->exports++;
    Py_BEGIN_ALLOW_THREADS
    rc = nomyo_random(buf, len);
    if (rc != 0)
        saved = errno;
    Py_END_ALLOW_THREADS
    region_unpin(self);
    if (rc != 0) {
        errno = saved;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *region_get_address(RegionObject *self, void *closure)
{
    (void)closure;
    if (!region_open(self))
        return closed_error();
    return PyLong_FromVoidPtr(self->memory.buf);
}

static PyObject *region_get_closed(RegionObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->closed);
}

static PyObject *region_get_owner(RegionObject *self, void *closure)
{
    (void)closure;
    if (self->owner == NULL)
        Py_RETURN_NONE;
    Py_INCREF(self->owner);
    return self->owner;
}

static PyObject *region_get_exports(RegionObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(self->exports);
}

static Py_ssize_t region_length(RegionObject *self)
{
    if (!region_open(self)) {
        closed_error();
        return -1;
    }
    return self->memory.len;
}

static PyMethodDef region_methods[] = {
    {"_wipe", (PyCFunction)region_wipe, METH_NOARGS, "Zero the data in place."},
    {"_close", (PyCFunction)region_close, METH_NOARGS,
     "Zero now; let the memory go now, or when the last exported view is released."},
    {"_fill_random", (PyCFunction)region_fill_random, METH_NOARGS,
     "Fill the data from the kernel's CSPRNG (the region pinned meanwhile)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef region_getset[] = {
    {"_address", (getter)region_get_address, NULL, NULL, NULL},
    {"_closed", (getter)region_get_closed, NULL, NULL, NULL},
    {"_owner", (getter)region_get_owner, NULL, "the memory's owner while held, else None", NULL},
    {"_exports", (getter)region_get_exports, NULL, NULL, NULL},
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
    .tp_name = "nomyo._pyglue.Region",
    .tp_basicsize = sizeof(RegionObject),
    .tp_dealloc = (destructor)region_dealloc,
    .tp_as_sequence = &region_as_sequence,
    .tp_as_buffer = &region_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Region(memory, owner): exports a region's memory (a writable buffer) "
              "through the buffer protocol; the memory is freed when the owner goes.",
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
        if (!region_open(r))
            return 0;
        nomyo_zero(r->memory.buf, (size_t)r->memory.len);
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

/* the decoded bytearray cut to its length, or NULL (out released) when the
 * text was not strict base64: the end both decoders share */
static PyObject *b64_finish(PyObject *out, long long written)
{
    if (written < 0) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_ValueError, "not strict standard base64");
        return NULL;
    }
    /* shrinking keeps the allocation, so spare bytes can be appended in place */
    if (PyByteArray_Resize(out, (Py_ssize_t)written) != 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

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
    return b64_finish(out, written); /* `reserve` bytes stay spare */
}

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

/* b64encode(buffer) -> bytearray: standard padded base64 */
static PyObject *py_b64encode(PyObject *module, PyObject *source)
{
    Py_buffer in;
    PyObject *out;
    (void)module;
    if (PyObject_GetBuffer(source, &in, PyBUF_C_CONTIGUOUS) != 0)
        return NULL;
    out = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)nomyo_b64_encoded_len((size_t)in.len));
    if (out != NULL) {
        char *dst = PyByteArray_AS_STRING(out);
        Py_BEGIN_ALLOW_THREADS /* both buffers held: they cannot go meanwhile */
        nomyo_b64_encode(in.buf, (size_t)in.len, dst);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&in);
    return out;
}

/* b64decode(buffer) -> bytearray: strict, canonical standard base64 */
static PyObject *py_b64decode(PyObject *module, PyObject *source)
{
    Py_buffer in;
    PyObject *out;
    long long written;
    (void)module;
    if (PyObject_GetBuffer(source, &in, PyBUF_C_CONTIGUOUS) != 0)
        return NULL;
    out = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)nomyo_b64_decoded_max((size_t)in.len));
    if (out == NULL) {
        PyBuffer_Release(&in);
        return NULL;
    }
    {
        unsigned char *dst = (unsigned char *)PyByteArray_AS_STRING(out);
        Py_BEGIN_ALLOW_THREADS
        written = nomyo_b64_decode(in.buf, (size_t)in.len, dst);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&in);
    return b64_finish(out, written);
}

static PyObject *py_scrub_stack(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    nomyo_scrub_stack();
    Py_RETURN_NONE;
}

#ifdef NOMYO_SANITIZE_BUILD
/* the sanitizer lane's positive controls, for this module's instrumentation */
static PyObject *py_selftest_heap_read(PyObject *module, PyObject *args)
{
    Py_ssize_t size, index;
    (void)module;
    if (!PyArg_ParseTuple(args, "nn", &size, &index))
        return NULL;
    return PyLong_FromLong(nomyo_selftest_heap_read((size_t)size, (size_t)index));
}

static PyObject *py_selftest_shift(PyObject *module, PyObject *args)
{
    int value, by;
    (void)module;
    if (!PyArg_ParseTuple(args, "ii", &value, &by))
        return NULL;
    return PyLong_FromLong(nomyo_selftest_shift(value, by));
}
#endif

static PyMethodDef glue_functions[] = {
    {"json_size", nomyo_json_size, METH_O, "json_size(obj) -> bytes of its compact UTF-8 JSON"},
    {"json_parse", nomyo_json_parse, METH_VARARGS,
     "json_parse(buffer, unique_keys=False) -> the JSON value in UTF-8"},
    {"json_into", nomyo_json_into, METH_VARARGS,
     "json_into(obj, buffer) -> bytes written (exactly json_size(obj))"},
    {"pack", py_pack, METH_O, "pack(pieces) -> bytes; (buffer,) pieces as base64"},
    {"b64decode_str", py_b64decode_str, METH_VARARGS,
     "b64decode_str(text, reserve) -> bytearray, strict standard base64"},
    {"b64encode", py_b64encode, METH_O, "b64encode(buffer) -> bytearray, standard base64"},
    {"b64decode", py_b64decode, METH_O,
     "b64decode(buffer) -> bytearray; ValueError unless strict standard base64"},
    {"wipe_object", py_wipe_object, METH_VARARGS,
     "wipe_object(obj, max_refs) -> number of objects zeroed in place"},
    {"refcount", py_refcount, METH_VARARGS,
     "refcount(obj, max_refs) -> the reference count as wipe_object sees it"},
    {"scrub_stack", py_scrub_stack, METH_NOARGS,
     "scrub_stack() -> None: zero the vector registers and 32 KiB of stack below"},
#ifdef NOMYO_SANITIZE_BUILD
    {"_selftest_heap_read", py_selftest_heap_read, METH_VARARGS, NULL},
    {"_selftest_shift", py_selftest_shift, METH_VARARGS, NULL},
#endif
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef pyglue_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "nomyo._pyglue",
    .m_doc = "nomyo's native code that touches Python objects (see csrc/pyglue.h).",
    .m_size = -1,
    .m_methods = glue_functions,
};

PyMODINIT_FUNC PyInit__pyglue(void)
{
    PyObject *module;
    if (PyType_Ready(&RegionType) != 0)
        return NULL;
    module = PyModule_Create(&pyglue_module);
    if (module == NULL)
        return NULL;
    Py_INCREF(&RegionType);
    if (PyModule_AddObject(module, "Region", (PyObject *)&RegionType) != 0) {
        Py_DECREF(&RegionType);
        Py_DECREF(module);
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "SANITIZE_BUILD",
#ifdef NOMYO_SANITIZE_BUILD
                                1
#else
                                0
#endif
                                ) != 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
