#!/usr/bin/env python3
"""A Modbus TCP (or RTU) server for Outpost's integration tests, built on pymodbus 3.

It serves a fixed register map holding a value of every type in every byte and word order
(encoded here with Python's `struct`, independently of Outpost's decoder), so a test can check
that Outpost decodes each one exactly. The expected values are listed in EXPECTED below and
printed as JSON with `--print-expected`.

Every request is logged on stdout, one line each, flushed at once:
    REQ fc=3 addr=0 count=59
    BUSY fc=3 addr=0 count=59        (answered with exception 0x06 / 0x05, see --busy)
so a test can count the requests one poll sends. `LISTENING <port>` is printed once the
server accepts connections.

Options:
    --port N        TCP port to listen on (127.0.0.1).
    --busy N        answer the first N read requests with exception 0x06 "server device busy".
    --busy-code C   the exception code --busy answers with (6 = busy, 5 = acknowledge).
    --rtu           serve Modbus RTU on a pseudo terminal instead of TCP; prints
                    `PTY <path>`: the serial device Outpost opens (bridged to the pymodbus
                    serial server by this script).
"""

import argparse
import asyncio
import json
import os
import struct
import sys
import threading

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice

ORDERS = {
    "ABCD": ("big", "big"),
    "CDAB": ("big", "little"),
    "BADC": ("little", "big"),
    "DCBA": ("little", "little"),
}

STRUCT = {"u16": "H", "i16": "h", "u32": "I", "i32": "i", "u64": "Q", "i64": "q", "f32": "f", "f64": "d"}

# (name, type, order, value) laid out back to back from holding register 0.
HOLDING = [
    ("u16_abcd", "u16", "ABCD", 65000),
    ("i16_abcd", "i16", "ABCD", -1234),
    ("i16_badc", "i16", "BADC", -1234),
    ("u32_abcd", "u32", "ABCD", 4000000000),
    ("u32_cdab", "u32", "CDAB", 4000000000),
    ("i32_badc", "i32", "BADC", -2000000000),
    ("i32_dcba", "i32", "DCBA", -2000000000),
    ("u64_abcd", "u64", "ABCD", 18446744073709551557),
    ("u64_dcba", "u64", "DCBA", 18446744073709551557),
    ("i64_cdab", "i64", "CDAB", -9007199254740993),
    ("i64_badc", "i64", "BADC", 9007199254740993),
    ("f32_abcd", "f32", "ABCD", 21.7),
    ("f32_cdab", "f32", "CDAB", 123.456),
    ("f32_badc", "f32", "BADC", 1e-07),
    ("f32_dcba", "f32", "DCBA", -273.15),
    ("f64_abcd", "f64", "ABCD", 3.141592653589793),
    ("f64_cdab", "f64", "CDAB", 0.1),
    ("f64_badc", "f64", "BADC", 6.02214076e23),
    ("f64_dcba", "f64", "DCBA", -1.7976931348623157e308),
]


def registers(value_type, order, value):
    """The registers of `value`, laid out in `order` (ABCD = big-endian bytes and words)."""
    data = struct.pack(">" + STRUCT[value_type], value)
    byte_order, word_order = ORDERS[order]
    words = []
    for i in range(0, len(data), 2):
        hi, lo = data[i], data[i + 1]
        words.append((lo << 8 | hi) if byte_order == "little" else (hi << 8 | lo))
    if word_order == "little":
        words.reverse()
    return words


def string_registers(text, length, byte_order):
    data = text.encode("utf-8").ljust(length * 2, b"\0")
    return [
        (data[i + 1] << 8 | data[i]) if byte_order == "little" else (data[i] << 8 | data[i + 1])
        for i in range(0, len(data), 2)
    ]


def build():
    """Returns (holding registers, input registers, coils, discrete inputs, expected)."""
    hr, expected = [], {}
    layout = []
    for name, value_type, order, value in HOLDING:
        layout.append({"name": name, "type": value_type, "order": order, "address": len(hr)})
        hr.extend(registers(value_type, order, value))
        # What the value means after a round trip through its type.
        if value_type == "f32":
            value = struct.unpack(">f", struct.pack(">f", value))[0]
        expected[name] = value
    layout.append({"name": "name_be", "type": "string", "order": "ABCD", "address": len(hr), "length": 6})
    hr.extend(string_registers("FRIDGE-07", 6, "big"))
    expected["name_be"] = "FRIDGE-07"
    layout.append({"name": "name_le", "type": "string", "order": "BADC", "address": len(hr), "length": 4})
    hr.extend(string_registers("Zone B", 4, "little"))
    expected["name_le"] = "Zone B"
    layout.append({"name": "flags", "type": "u16", "order": "ABCD", "address": len(hr)})
    hr.append(0b0000_0000_1010_0101)
    expected["flags"] = 0b0000_0000_1010_0101
    layout.append({"name": "scaled", "type": "i16", "order": "ABCD", "address": len(hr)})
    hr.append(2131)
    expected["scaled"] = 2131
    ir = registers("f32", "ABCD", 4.25) + [7]
    coils = [True, False, True, True, False, False, False, True]
    discrete = [False, True, True, False]
    return hr, ir, coils, discrete, expected, layout


def bits_register_list(bits):
    """pymodbus keeps bits in 16-bit registers, bit 0 first."""
    padded = bits + [False] * (-len(bits) % 16)
    regs = []
    for i in range(0, len(padded), 16):
        reg = 0
        for j, bit in enumerate(padded[i : i + 16]):
            if bit:
                reg |= 1 << j
        regs.append(reg)
    return regs


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=5020)
    parser.add_argument("--busy", type=int, default=0)
    parser.add_argument("--busy-code", type=int, default=6, choices=[5, 6])
    parser.add_argument("--rtu", action="store_true")
    parser.add_argument("--print-expected", action="store_true")
    args = parser.parse_args()

    hr, ir, coils, discrete, expected, layout = build()
    if args.print_expected:
        print(json.dumps({"expected": expected, "layout": layout}))
        return

    busy_left = [args.busy]
    busy_code = ExcCodes.DEVICE_BUSY if args.busy_code == 6 else ExcCodes.ACKNOWLEDGE

    async def action(function_code, _start, address, count, _registers, set_values):
        if set_values is None and busy_left[0] > 0:
            busy_left[0] -= 1
            say(f"BUSY fc={function_code} addr={address} count={count}")
            return busy_code
        return None

    def trace_pdu(sending, pdu):
        if not sending:
            say(f"REQ fc={pdu.function_code} addr={pdu.address} count={pdu.count}")
        return pdu

    device = SimDevice(
        id=0,
        simdata=(
            [SimData(0, values=bits_register_list(coils), datatype=DataType.BITS)],
            [SimData(0, values=bits_register_list(discrete), datatype=DataType.BITS)],
            [SimData(0, values=hr, datatype=DataType.REGISTERS)],
            [SimData(0, values=ir, datatype=DataType.REGISTERS)],
        ),
        action=action,
    )
    asyncio.run(serve(args, device, trace_pdu))


def bridge(fd_a, fd_b):
    """Copies bytes both ways between two pty masters (a null-modem cable)."""

    def pump(src, dst):
        while True:
            try:
                data = os.read(src, 4096)
            except OSError:
                return
            if not data:
                return
            os.write(dst, data)

    for src, dst in ((fd_a, fd_b), (fd_b, fd_a)):
        threading.Thread(target=pump, args=(src, dst), daemon=True).start()


async def serve(args, device, trace_pdu):
    if args.rtu:
        from pymodbus.server import ModbusSerialServer
        import tty

        outside_master, outside_slave = os.openpty()
        inside_master, inside_slave = os.openpty()
        for fd in (outside_master, outside_slave, inside_master, inside_slave):
            tty.setraw(fd)
        bridge(outside_master, inside_master)
        server = ModbusSerialServer(
            device, port=os.ttyname(inside_slave), baudrate=19200, trace_pdu=trace_pdu
        )
        say(f"PTY {os.ttyname(outside_slave)}")
    else:
        from pymodbus.server import ModbusTcpServer

        server = ModbusTcpServer(device, address=("127.0.0.1", args.port), trace_pdu=trace_pdu)
    await server.serve_forever(background=True)
    say(f"LISTENING {args.port}")
    await asyncio.Event().wait()


if __name__ == "__main__":
    main()
