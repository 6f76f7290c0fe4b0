#!/usr/bin/env python3
"""Runs one workload of workloads.asm (assembled to functions.bin) natively or under
Unicorn, and prints the seconds the call took.

    peer.py native|unicorn FUNCTIONS_BIN INDEX REPS
"""
import ctypes
import mmap
import struct
import sys
import time

mode, path, index, reps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
code = open(path, "rb").read()
entry = struct.unpack_from("<Q", code, index * 8)[0]

if mode == "native":
    mem = mmap.mmap(-1, len(code), prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    mem.write(code)
    buf = ctypes.create_string_buffer(5 << 20)  # alias_copy's reach: 4 MiB + 64 KiB
    base = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    fn = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint32)(base + entry)
    start = time.perf_counter()
    fn(ctypes.addressof(buf), reps)
    print(time.perf_counter() - start)
elif mode == "unicorn":
    from unicorn import Uc, UC_ARCH_X86, UC_MODE_64
    from unicorn.x86_const import UC_X86_REG_RDI, UC_X86_REG_RSI, UC_X86_REG_RSP

    CODE, BUF, STACK, RET = 0x100000, 0x200000, 0x400000, 0x1000
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x700000)  # the buffer at BUF reaches 4 MiB + 64 KiB (alias_copy)
    uc.mem_write(CODE, code)
    uc.mem_write(RET, b"\xf4")
    uc.mem_write(STACK - 8, struct.pack("<Q", RET))
    uc.reg_write(UC_X86_REG_RSP, STACK - 8)
    uc.reg_write(UC_X86_REG_RDI, BUF)
    uc.reg_write(UC_X86_REG_RSI, reps)
    start = time.perf_counter()
    uc.emu_start(CODE + entry, RET)
    print(time.perf_counter() - start)
else:
    sys.exit(f"unknown mode {mode}")
