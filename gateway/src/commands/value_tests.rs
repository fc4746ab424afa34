//! Tests of command values: payload forms, every check, and whole numbers kept exact.

use serde_json::json;

use super::*;
use crate::model::Point;

fn point(ty: ValueType) -> Point {
    let mut p = crate::model::test_point(ty);
    p.writable = true;
    p
}

fn raw(p: &Point, v: serde_json::Value) -> Result<Value, CommandError> {
    to_raw(p, &Given::from(&v))
}

fn err(p: &Point, v: serde_json::Value) -> String {
    match raw(p, v.clone()) {
        Ok(raw) => panic!("{v} accepted as {raw:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_bool_is_not_a_number_in_any_form() {
    for ty in [ValueType::U16, ValueType::I32, ValueType::F32] {
        let p = point(ty);
        assert_eq!(err(&p, json!(true)), "wrong type: true is not a number");
        assert_eq!(err(&p, json!("true")), "wrong type: `true` is not a number");
    }
    // On a bool point both forms are fine.
    let b = point(ValueType::Bool);
    assert_eq!(raw(&b, json!(true)), Ok(Value::Bool(true)));
    assert_eq!(raw(&b, json!("yes")), Ok(Value::Bool(true)));
    assert_eq!(raw(&b, json!("LOW")), Ok(Value::Bool(false)));
}

#[test]
fn out_of_range_names_the_value_and_the_limits_once() {
    let p = point(ValueType::U16);
    assert_eq!(
        err(&p, json!(70000)),
        "out of range: value 70000 does not fit u16 (0 to 65535)"
    );
    assert_eq!(
        err(&p, json!(3.5e38)),
        "out of range: value 3.5e38 does not fit u16 (0 to 65535)"
    );
    assert_eq!(
        err(&point(ValueType::I16), json!(-40000)),
        "out of range: value -40000 does not fit i16 (-32768 to 32767)"
    );
    let mut scaled = point(ValueType::U16);
    scaled.scale = 0.1;
    assert_eq!(
        err(&scaled, json!(7000)),
        "out of range: value 7000 (70000 in the register) does not fit u16 (0 to 65535)"
    );
    assert_eq!(raw(&scaled, json!(6553.5)), Ok(Value::Int(65535)));
    assert_eq!(
        err(&point(ValueType::F32), json!(1e39)),
        "out of range: value 1e39 does not fit f32"
    );
    assert_eq!(
        raw(&point(ValueType::U64), json!(18446744073709551615u64)),
        Ok(Value::U64(18446744073709551615))
    );
}

#[test]
fn limits_scale_and_names() {
    let mut p = point(ValueType::I16);
    p.max = Some(30.0);
    p.min = Some(5.0);
    assert_eq!(err(&p, json!(31)), "value 31 above max 30");
    assert_eq!(err(&p, json!("4.5")), "value 4.5 below min 5");
    p.scale = 0.5;
    assert_eq!(
        err(&p, json!(10.2)),
        "out of range: 10.2 is not a whole multiple of the scale 0.5"
    );
    assert_eq!(raw(&p, json!(10.5)), Ok(Value::Int(21)));
    let mut named = point(ValueType::U16);
    named.value_map = vec![("ECO".into(), 2.0)];
    assert_eq!(raw(&named, json!("eco")), Ok(Value::Int(2)));
    let mut ro = point(ValueType::U16);
    ro.writable = false;
    assert_eq!(
        err(&ro, json!(1)),
        "not writable: point `t` is not writable"
    );
}

#[test]
fn payload_forms() {
    assert_eq!(
        parse_payload(b" 21.5 ").map(|(v, _)| v),
        Ok(Given::Text("21.5".into()))
    );
    let (v, id) = parse_payload(br#"{"value": 2, "id": "a"}"#).expect("json");
    assert_eq!((v, id), (Given::Number("2".into()), Some(json!("a"))));
    let cases: [(&[u8], &str); 4] = [
        (b"", "unparsable payload: empty"),
        (b"\xff", "unparsable payload: not UTF-8 text"),
        (
            br#"{"id": 1}"#,
            "unparsable payload: JSON needs a \"value\" field",
        ),
        (b"{nope", "unparsable payload: invalid JSON"),
    ];
    for (payload, text) in cases {
        let (e, _) = parse_payload(payload).expect_err("refused");
        assert!(e.to_string().starts_with(text), "{e}");
    }
}

/// A payload as it arrives on `/set`, through to the raw value.
fn via_payload(p: &Point, payload: &str) -> Result<Value, String> {
    let (given, _) = parse_payload(payload.as_bytes()).map_err(|(e, _)| e.to_string())?;
    to_raw(p, &given).map_err(|e| e.to_string())
}

#[test]
fn whole_numbers_are_exact_as_text_and_as_json() {
    let u64p = point(ValueType::U64);
    let i64p = point(ValueType::I64);
    // (point, number as written, expected)
    let exact: [(&Point, &str, Value); 8] = [
        (&u64p, "9007199254740993", Value::Int(9_007_199_254_740_993)),
        (&u64p, "9007199254740991", Value::Int(9_007_199_254_740_991)),
        (
            &i64p,
            "-9007199254740993",
            Value::Int(-9_007_199_254_740_993),
        ),
        (&u64p, "9223372036854775808", Value::U64(1 << 63)),
        (&u64p, "18446744073709551615", Value::U64(u64::MAX)),
        (&i64p, "9223372036854775807", Value::Int(i64::MAX)),
        (&i64p, "-9223372036854775808", Value::Int(i64::MIN)),
        // Written with a fraction of zeros or an exponent, still exact.
        (
            &u64p,
            "9007199254740993.000",
            Value::Int(9_007_199_254_740_993),
        ),
    ];
    for (p, n, want) in exact {
        assert_eq!(via_payload(p, n), Ok(want.clone()), "text {n}");
        let json = format!(r#"{{"value": {n}, "id": 7}}"#);
        assert_eq!(via_payload(p, &json), Ok(want), "json {n}");
    }
    let refused = [
        (
            &u64p,
            "18446744073709551616",
            "out of range: value 18446744073709551616 does not fit u64 (0 to 18446744073709551615)",
        ),
        (
            &i64p,
            "9223372036854775808",
            "out of range: value 9223372036854775808 does not fit i64 (-9223372036854775808 to 9223372036854775807)",
        ),
        (
            &i64p,
            "-9223372036854775809",
            "out of range: value -9223372036854775809 does not fit i64 (-9223372036854775808 to 9223372036854775807)",
        ),
        (
            &u64p,
            "-1",
            "out of range: value -1 does not fit u64 (0 to 18446744073709551615)",
        ),
        (
            &u64p,
            "1e30",
            "out of range: value 1000000000000000000000000000000 does not fit u64 (0 to 18446744073709551615)",
        ),
        (
            &u64p,
            "1e40",
            "out of range: value 1e40 does not fit u64 (0 to 18446744073709551615)",
        ),
    ];
    for (p, n, want) in refused {
        assert_eq!(
            via_payload(p, n).map_err(|e| e.to_string()),
            Err(want.to_string()),
            "text {n}"
        );
        let json = format!(r#"{{"value": {n}}}"#);
        assert_eq!(
            via_payload(p, &json).map_err(|e| e.to_string()),
            Err(want.to_string()),
            "json {n}"
        );
    }
    // Limits compare exactly too: 2^53 + 1 is above a max of 2^53.
    let mut capped = point(ValueType::U64);
    capped.max = Some(9_007_199_254_740_992.0);
    assert_eq!(
        via_payload(&capped, "9007199254740993").map_err(|e| e.to_string()),
        Err(String::from(
            "value 9007199254740993 above max 9007199254740992"
        ))
    );
    assert_eq!(
        via_payload(&capped, "9007199254740992"),
        Ok(Value::Int(9_007_199_254_740_992))
    );
    // A fraction on a whole-number point is still refused.
    assert_eq!(
        via_payload(&u64p, "2.5").map_err(|e| e.to_string()),
        Err(String::from(
            "out of range: 2.5 is not a whole multiple of the scale 1"
        ))
    );
}

#[test]
fn exact_integer_literals() {
    for (text, want) in [
        ("0", Some(0)),
        ("-0", Some(0)),
        ("+7", Some(7)),
        ("007", Some(7)),
        ("12.000", Some(12)),
        ("1.2e3", Some(1200)),
        ("1200e-2", Some(12)),
        ("1E2", Some(100)),
        (".5e1", Some(5)),
        ("1.5", None),
        ("1e-1", None),
        ("1e39", None),
        ("abc", None),
        ("", None),
        ("-", None),
        ("1e", None),
        ("0x10", None),
        ("1.2.3", None),
    ] {
        assert_eq!(exact_integer(text), want, "{text:?}");
    }
}

/// A Modbus master's raw value meets the checks a `/set` of its value after scale and
/// offset meets, with the same texts, and becomes the raw value that `/set` would write.
#[test]
fn a_raw_value_is_checked_as_the_set_of_its_value() {
    let mut p = point(ValueType::U16);
    p.scale = 0.1;
    p.min = Some(5.0);
    p.max = Some(30.0);
    assert_eq!(check_raw(&p, &Value::Int(215)), Ok(Value::Int(215)));
    assert_eq!(check_raw(&p, &Value::Int(215)), raw(&p, json!(21.5)));
    for (r, set) in [(301, json!(30.1)), (49, json!(4.9))] {
        let by_master = check_raw(&p, &Value::Int(r)).map_err(|e| e.to_string());
        assert_eq!(by_master, Err(err(&p, set)), "{r}");
    }
    // Exact on a point without scale: a u64 past 2^53 is neither rounded nor refused.
    let mut big = point(ValueType::U64);
    big.max = Some(18014398509481984.0);
    assert_eq!(
        check_raw(&big, &Value::Int(9007199254740993)),
        Ok(Value::Int(9007199254740993))
    );
    assert_eq!(
        check_raw(&big, &Value::U64(u64::MAX)).map_err(|e| e.to_string()),
        Err(err(&big, json!(u64::MAX)))
    );
    let mut limited = point(ValueType::I32);
    limited.min = Some(-100.0);
    assert_eq!(
        check_raw(&limited, &Value::Int(-101)).map_err(|e| e.to_string()),
        Err(err(&limited, json!(-101)))
    );
    // Floats: finite only; bools and text as `/set` takes them.
    let f = point(ValueType::F32);
    assert!(check_raw(&f, &Value::Float(f64::NAN)).is_err());
    assert_eq!(check_raw(&f, &Value::Float(1.5)), Ok(Value::Float(1.5)));
    assert_eq!(
        check_raw(&point(ValueType::Bool), &Value::Bool(true)),
        Ok(Value::Bool(true))
    );
    let mut text = point(ValueType::String { len: 4 });
    assert_eq!(
        check_raw(&text, &Value::Str("ab".into())),
        Ok(Value::Str("ab".into()))
    );
    text.writable = false;
    assert_eq!(
        check_raw(&text, &Value::Str("ab".into())).map_err(|e| e.to_string()),
        Err("not writable: point `t` is not writable".into())
    );
    let mut ro = point(ValueType::U16);
    ro.writable = false;
    assert!(matches!(
        check_raw(&ro, &Value::Int(1)),
        Err(CommandError::NotWritable(_))
    ));
}
