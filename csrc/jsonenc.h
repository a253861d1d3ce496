/* The JSON encoder of nomyo._pyglue (jsonenc.c): METH_O / METH_VARARGS
 * functions, called with the GIL held. */
#ifndef NOMYO_JSONENC_H
#define NOMYO_JSONENC_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* json_size(obj) -> bytes of its compact UTF-8 JSON */
PyObject *nomyo_json_size(PyObject *module, PyObject *obj);
/* json_into(obj, buffer) -> bytes written (exactly json_size(obj)) */
PyObject *nomyo_json_into(PyObject *module, PyObject *args);

#endif
