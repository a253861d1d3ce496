/* How deeply JSON values may nest: one limit for the codec (csrc/jsonenc.c,
 * csrc/jsondec.c) and for wipe() (csrc/pyglue.c), so that whatever the
 * codec makes or writes, wipe() follows to its last value.
 *
 * NOMYO_MAX_NESTING is defined once, as MAX_NESTING in
 * src/nomyo/_constants.py (which the pure-Python fallback reads);
 * csrc/build.py reads it from there and passes it to the compiler. */
#ifndef NOMYO_NESTING_H
#define NOMYO_NESTING_H

#ifndef NOMYO_MAX_NESTING
#error "NOMYO_MAX_NESTING comes from src/nomyo/_constants.py, passed by csrc/build.py"
#endif

#if NOMYO_MAX_NESTING < 1 || NOMYO_MAX_NESTING > 100000
#error "NOMYO_MAX_NESTING out of range"
#endif

#endif
