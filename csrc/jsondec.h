/* The JSON decoder of nomyo._pyglue (jsondec.c): a METH_VARARGS function,
 * called with the GIL held. */
#ifndef NOMYO_JSONDEC_H
#define NOMYO_JSONDEC_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* json_parse(buffer, unique_keys=False) -> the JSON value in UTF-8 */
PyObject *nomyo_json_parse(PyObject *module, PyObject *args);

#endif
