# Typed view of the wire structures; must match _trim/format.py and docs/protocol.md.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t

cdef packed struct MessageHeader:
    char magic[4]
    uint16_t version
    uint16_t header_nbytes
    uint32_t n_rows
    uint32_t n_columns
    uint32_t names_nbytes
    uint32_t flags
    uint64_t total_nbytes

cdef packed struct ColumnEntry:
    uint32_t name_offset
    uint16_t name_nbytes
    uint8_t dtype
    uint8_t flags
    uint32_t width
    uint32_t reserved
    uint64_t n_values
    uint64_t data_offset
    uint64_t data_nbytes

cdef struct CopyRange:
    uint64_t src_start
    uint64_t nbytes
    uint64_t dst_start
