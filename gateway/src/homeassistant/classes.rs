//! Device and state classes a sensor's unit implies (with a hint from its topic where a
//! unit alone is ambiguous: `%` is humidity only for a humidity point).

use crate::model::Point;

/// What a unit implies.
pub(super) struct Class {
    /// Home Assistant's device class, when the unit names one.
    pub(super) device_class: Option<&'static str>,
    /// `measurement`, or `total_increasing` for energy.
    pub(super) state_class: &'static str,
}

/// The classes of numeric point `p`, from its unit and topic.
pub(super) fn of(p: &Point) -> Class {
    let topic = p.topic.to_lowercase();
    let hint = |words: &[&str]| words.iter().any(|w| topic.contains(w));
    let unit = p.unit.as_deref().unwrap_or("");
    let device_class = match unit {
        "°C" | "°F" | "K" => Some("temperature"),
        "%" if hint(&["humid", "umid", "hum"]) => Some("humidity"),
        "%" if hint(&["batt", "bater"]) => Some("battery"),
        "%" if hint(&["moist", "solo", "soil"]) => Some("moisture"),
        "W" | "kW" | "MW" => Some("power"),
        "Wh" | "kWh" | "MWh" => Some("energy"),
        "V" | "mV" | "kV" => Some("voltage"),
        "A" | "mA" => Some("current"),
        "Hz" | "kHz" => Some("frequency"),
        "Pa" | "hPa" | "kPa" | "bar" | "mbar" | "psi" | "mmHg" => Some("pressure"),
        "ppm" if hint(&["co2", "carbon_dioxide", "carbono"]) => Some("carbon_dioxide"),
        "lx" => Some("illuminance"),
        "VA" | "kVA" => Some("apparent_power"),
        "var" | "kvar" => Some("reactive_power"),
        "dBm" => Some("signal_strength"),
        "µg/m³" if hint(&["pm25", "pm2_5", "pm2.5"]) => Some("pm25"),
        "µg/m³" if hint(&["pm10"]) => Some("pm10"),
        _ => None,
    };
    Class {
        device_class,
        state_class: if device_class == Some("energy") {
            "total_increasing"
        } else {
            "measurement"
        },
    }
}
