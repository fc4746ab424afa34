//! Configuration: the gateway file and the mapping files (YAML) as the user writes them,
//! and their validation into the runtime [`Model`](crate::model::Model).
//!
//! The file structs mirror the files one to one; every `///` comment on them is the user
//! reference for that key (see `mappings/REFERENCE.md`). Unknown keys are rejected.
//! Validation collects every problem as a [`Diagnostic`] with its file, line, column and
//! field path, printed as `file:line:col: field.path: message; hint`. Structural problems
//! (YAML syntax, unknown keys, wrong value types) stop the file they are in at the first
//! one; every semantic problem in every file is reported.
//!
//! The files of this folder:
//!
//! | file | holds |
//! |---|---|
//! | `load.rs` | the entry points [`load`] and [`check_sources`]: read, parse, validate, report in file order |
//! | `parse.rs` | YAML → file structs, [`ParseProblem`] with a did-you-mean hint, [`resolve_mappings`] |
//! | `diagnostic.rs` | [`Diagnostic`] and [`Severity`] |
//! | `values.rs` | [`Spanned`], [`HumanDuration`], [`ByteSize`], [`OneOrMany`] |
//! | `gateway_file.rs` | the gateway file's structs: [`GatewayFile`], `mqtt:`, `mqtt.upstream:`, `mqtt.embedded:` |
//! | `mapping_file.rs` | the mapping file's structs: [`MappingFile`], [`BusFile`], [`DeviceFile`], [`PointFile`] |
//! | `validator.rs` | the validator's state and the checks all parts share |
//! | `gateway.rs` | the gateway file's top level and `mqtt:` |
//! | `upstream.rs` | `mqtt.upstream` (and [`parse_url`]) |
//! | `embedded.rs` | `mqtt.embedded`: listener, users, rights, TLS, and the warnings that need the points |
//! | `embedded_subscriptions.rs` | `mqtt.embedded.max_subscriptions` and `max_subscriptions_total` |
//! | `embedded_store.rs` | `mqtt.embedded`: bounds of what is held for offline clients, the store on disk |
//! | `mapping.rs` | all mapping files together: bus and device ids, reserved and command topics |
//! | `device.rs` | one device |
//! | `point.rs` | one point: the keys every bus kind shares; its bus kind's file gives the value type and the `model::Source` |
//! | `modbus.rs` | Modbus: its key values, `modbus_tcp`/`modbus_rtu` buses, the Modbus half of a point |
//! | `modbus_server.rs` | `modbus_server:` of the gateway file (the Modbus TCP server): its structs, listener, `allow` and bounds |
//! | `modbus_server_units.rs` | `modbus_server.units`: which served unit id is which device, and the warnings that need the served devices |
//! | `serial.rs` | a serial line (`modbus_rtu`, `uart`): port and framing |
//! | `uart.rs` | UART: its key values, the bus, the line parser, the UART half of a point |
//! | `gpio.rs` | GPIO: its key values, the bus, the GPIO half of a point |
//! | `writes.rs` | how a point is written: `write_address`, `write_only`, `rewrite_every` |
//! | `homeassistant.rs` | `homeassistant:` of the gateway file, of a device and of a point |
//! | `cadence.rs` | a point's own `poll_interval` |
//! | `schema.rs` | JSON Schemas of both files, derived from their structs (`fieldlink schema`) |
//! | `profile_file.rs` | a device profile's structs: [`ProfileFile`], its points and a device's `overrides:` |
//! | `profiles.rs` | the profiles a configuration can use: shipped (compiled in) and the user's `profiles:` directories |
//! | `profile_use.rs` | a device with `profile:`: its points expanded before validation, diagnostics moved to both files |
//! | `scale_register.rs` | a point's `scale_register` (SunSpec scale factors); topics RabbitMQ would rename |
//!
//! A new bus kind gets its own file next to `modbus.rs`, `uart.rs` and `gpio.rs`, plus its
//! keys in [`BusFile`]/[`PointFile`] and a line in the dispatch of `mapping.rs`/`point.rs`.

mod cadence;
mod device;
mod device_json;
mod diagnostic;
mod embedded;
mod embedded_store;
mod embedded_subscriptions;
mod gateway;
mod gateway_file;
mod gpio;
mod homeassistant;
mod load;
mod mapping;
mod mapping_file;
mod modbus;
mod modbus_server;
#[cfg(test)]
mod modbus_server_tests;
mod modbus_server_units;
mod parse;
mod point;
mod profile_file;
#[cfg(test)]
mod profile_tests;
mod profile_use;
mod profiles;
mod scale_register;
pub mod schema;
mod serial;
mod uart;
mod upstream;
mod validator;
mod values;
mod writes;

pub use device::DEFAULT_MAX_BACKOFF;
pub use diagnostic::{Diagnostic, Severity};
pub use embedded_store::{
    DEFAULT_AUTOSAVE_INTERVAL, DEFAULT_MAX_QUEUED_BYTES, DEFAULT_MAX_QUEUED_BYTES_TOTAL,
    DEFAULT_MAX_QUEUED_MESSAGES, STORE_FILE,
};
pub use gateway::DEFAULT_STATE_DIR;
pub use gateway_file::{
    EmbeddedFile, EmbeddedTlsFile, GatewayFile, MqttFile, QueueFile, UpstreamFile,
};
pub use gpio::{
    GpioBackendName, GpioModeName, OnShutdownName, PullName, DEFAULT_DEBOUNCE, GPIO_MAX_PIN,
};
pub use homeassistant::{
    ComponentName, DeviceHaFile, EntityCategoryName, HomeAssistantFile, PointHaFile,
    StateClassName, DEFAULT_DISCOVERY_PREFIX,
};
pub use load::{check_sources, load, Checked, ResolveProblems};
pub use mapping_file::{
    BusFile, BusKindName, DeviceFile, MapValue, MappingFile, PayloadName, PointFile, PublishName,
    TypeName,
};
pub use modbus::{OrderName, TableName};
pub use modbus_server::{
    ModbusServerFile, UnitsFile, DEFAULT_MODBUS_FRAME_TIMEOUT, DEFAULT_MODBUS_IDLE_TIMEOUT,
    DEFAULT_MODBUS_LISTEN, DEFAULT_MODBUS_MAX_CONNECTIONS,
};
pub use parse::{did_you_mean, parse_yaml, resolve_mappings, Loaded, ParseProblem};
pub use profile_file::{
    OverridesFile, PointOverrideFile, ProfileDocumentFile, ProfileFile, ProfileHaFile,
    ProfileKindName, ProfileMetaFile, ProfilePointFile, ProfileSerialFile,
};
pub use profile_use::check_profile;
pub use profiles::{
    list_profiles, profile_text, Profile, ProfileSummary, ProfilesError, SHIPPED_DIR,
};
pub use serial::ParityName;
pub use uart::{ParamValue, ParserFile, ParserKindName, DEFAULT_MAX_LINE};
pub use upstream::{parse_url, DEFAULT_QUEUE_SIZE};
pub use values::{ByteSize, HumanDuration, OneOrMany, Spanned, MAX_DURATION};

use mapping::Class;
use modbus::noun;
use point::value_type;
use validator::{at, Cx, Validator};
