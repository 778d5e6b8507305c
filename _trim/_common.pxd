# What the compiled parts of _trim (the gather kernel, the record program) both
# need of the wire: its alignment and the size of an element of each dtype code.
# format.py is the one table of the wire's codes: each module checks these
# against it at import.
from libc.stdint cimport uint64_t

cdef enum:
    WIRE_ALIGN = 8        # format.ALIGN: every column's data starts on a multiple of it
    WIRE_CODES_END = 9    # dtype codes 1..8 are the wire's (format.DTYPE_CODES)
    RAW_CODES_END = 13    # 9..12 only a store's raw fields have (the record program's RAW_CODES)

cdef extern from *:
    """
    #include <stdint.h>
    /* Bytes per element by dtype code: the wire's (format.DTYPE_CODES), then
       int16, uint16, uint32 and uint64; 0 for code 0, which names no dtype. */
    static const uint64_t trim_item_nbytes[13] = {0, 4, 2, 8, 8, 4, 1, 1, 1, 2, 2, 4, 8};
    """
    const uint64_t ITEMSIZE "trim_item_nbytes"[13]


cdef inline uint64_t align_up(uint64_t n) noexcept nogil:
    return (n + WIRE_ALIGN - 1) & ~(<uint64_t>WIRE_ALIGN - 1)


cdef inline bint is_wire_code(uint64_t code) noexcept nogil:
    """Whether ``code`` names a dtype on the wire (not the program's raw codes)."""
    return 0 < code < WIRE_CODES_END
