//! Device I/O for fieldlink: no MQTT in here.
//!
//! - [`modbus`]: the value codec (every type × word order), the read planner, the
//!   transport-independent client seam, and the one Modbus master every bus kind uses:
//!   RTU or MBAP framing (`frame`) over a serial port or a TCP connection (`link`), with
//!   every reply checked (`master`); `rtu` and `tcp` name its three transports.
//! - [`gpio`]: the GPIO backend trait, a simulated board and the Raspberry Pi (rppal) backend.
//! - [`serial`]: serial port settings; [`uart`]: line framing, parsers and command
//!   templates of UART line devices.
//! - [`backoff`]: the reconnection backoff every transport uses.
//! - [`sim`]: Modbus device simulators (tokio-modbus [`Service`](tokio_modbus::server::Service)s)
//!   used by the tests and by `fieldlink demo`.

pub mod backoff;
pub mod gpio;
pub mod modbus;
pub mod serial;
pub mod sim;
pub mod uart;
pub mod value;
