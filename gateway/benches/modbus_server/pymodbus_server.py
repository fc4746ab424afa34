"""Reference Modbus TCP server for `cargo bench --bench modbus_server`: pymodbus 3.8 serving
the same holding registers the benchmark's simulated devices hold (value = address + 1),
at units 1..=N. Prints `listening PORT` once it accepts connections.

Usage: pymodbus_server.py PORT UNITS REGISTERS
"""

import asyncio
import sys

from pymodbus.datastore import (
    ModbusSequentialDataBlock,
    ModbusServerContext,
    ModbusSlaveContext,
)
from pymodbus.server import StartAsyncTcpServer


async def main() -> None:
    port, units, registers = (int(a) for a in sys.argv[1:4])
    values = [(a + 1) & 0xFFFF for a in range(registers)]
    slaves = {
        u: ModbusSlaveContext(
            # pymodbus 3.8 adds 1 to every request address before the block lookup: a
            # block starting at 1 puts protocol address 0 at values[0].
            hr=ModbusSequentialDataBlock(1, list(values)),
        )
        for u in range(1, units + 1)
    }
    context = ModbusServerContext(slaves=slaves, single=False)
    loop = asyncio.get_running_loop()
    loop.call_later(0.5, lambda: print(f"listening {port}", flush=True))
    await StartAsyncTcpServer(context=context, address=("127.0.0.1", port))


asyncio.run(main())
