//! Read Device Identification (function 43, MEI type 14): the request, the reply's length
//! from its own header (RTU has no length field) and its parsing.
//!
//! A reply PDU is `2B 0E code conformity more_follows next_object count` followed by
//! `count` objects of `id len value`. A device that has more objects than fit in one reply
//! says `more_follows = FF` and where to go on (`next_object`); the master asks again
//! from there.

/// Function code 43, Encapsulated Interface Transport.
pub const FUNCTION: u8 = 0x2B;
/// MEI type 14, Read Device Identification.
pub const MEI_READ_DEVICE_ID: u8 = 0x0E;
/// Read device id code 01: the basic objects, stream access.
pub const BASIC: u8 = 0x01;

/// Object id of the vendor name (basic, mandatory).
pub const VENDOR_NAME: u8 = 0x00;
/// Object id of the product code (basic, mandatory).
pub const PRODUCT_CODE: u8 = 0x01;
/// Object id of the major/minor revision (basic, mandatory).
pub const REVISION: u8 = 0x02;

/// Longest Modbus PDU, in bytes.
const MAX_PDU: usize = 253;

/// What a device says about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identification {
    /// Its conformity level (0x01–0x03, or 0x81–0x83 with individual access).
    pub conformity: u8,
    /// Every object received, by id, in the order received.
    pub objects: Vec<(u8, Vec<u8>)>,
}

impl Identification {
    /// Object `id` as text (bytes that are not UTF-8 replaced), if the device sent it.
    pub fn text(&self, id: u8) -> Option<String> {
        self.objects
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// One reply: a page of objects and where the next page starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// The read device id code the reply is for.
    pub code: u8,
    /// The device's conformity level.
    pub conformity: u8,
    /// Whether more objects follow in another request.
    pub more_follows: bool,
    /// The object id to ask for next, when more follow.
    pub next_object: u8,
    /// The objects of this page.
    pub objects: Vec<(u8, Vec<u8>)>,
}

/// The request PDU for `code` (01 basic, 02 regular, 03 extended, 04 one object) from
/// object `object` on.
pub fn request(code: u8, object: u8) -> [u8; 4] {
    [FUNCTION, MEI_READ_DEVICE_ID, code, object]
}

/// The full length of the reply PDU at the start of `pdu` (function code first), once its
/// headers are there; `Ok(None)` while they are not; an error when it cannot be one.
pub fn reply_len(pdu: &[u8]) -> Result<Option<usize>, String> {
    if pdu.len() < 7 {
        return Ok(None);
    }
    let count = usize::from(pdu[6]);
    let mut at = 7;
    for _ in 0..count {
        let Some(&len) = pdu.get(at + 1) else {
            return Ok(None);
        };
        at += 2 + usize::from(len);
        if at > MAX_PDU {
            return Err(format!(
                "device identification reply longer than {MAX_PDU} bytes"
            ));
        }
    }
    Ok(Some(at))
}

/// Parse a complete reply PDU (function code first).
pub fn parse(pdu: &[u8]) -> Result<Page, String> {
    if pdu.first() != Some(&FUNCTION) || pdu.get(1) != Some(&MEI_READ_DEVICE_ID) {
        return Err("not a device identification reply".into());
    }
    match reply_len(pdu)? {
        Some(n) if n == pdu.len() => {}
        Some(n) => {
            return Err(format!(
                "device identification reply of {} bytes, its objects say {n}",
                pdu.len()
            ))
        }
        None => return Err("truncated device identification reply".into()),
    }
    let more_follows = match pdu[4] {
        0x00 => false,
        0xFF => true,
        b => return Err(format!("more-follows byte {b:#04x}, expected 00 or FF")),
    };
    let mut objects = Vec::with_capacity(usize::from(pdu[6]));
    let mut at = 7;
    for _ in 0..pdu[6] {
        let (id, len) = (pdu[at], usize::from(pdu[at + 1]));
        objects.push((id, pdu[at + 2..at + 2 + len].to_vec()));
        at += 2 + len;
    }
    Ok(Page {
        code: pdu[2],
        conformity: pdu[3],
        more_follows,
        next_object: pdu[5],
        objects,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reply of the spec's example layout: vendor "ACME", product "PM10", revision
    /// "1.2".
    fn reply(more: u8) -> Vec<u8> {
        let mut p = vec![0x2B, 0x0E, 0x01, 0x01, more, 0x00, 3];
        for (id, v) in [(0u8, "ACME"), (1, "PM10"), (2, "1.2")] {
            p.push(id);
            p.push(v.len() as u8);
            p.extend_from_slice(v.as_bytes());
        }
        p
    }

    #[test]
    fn request_is_function_43_mei_14() {
        assert_eq!(request(BASIC, 0), [0x2B, 0x0E, 0x01, 0x00]);
    }

    #[test]
    fn reply_length_is_known_once_every_object_header_arrived() {
        let r = reply(0);
        for n in 0..7 {
            assert_eq!(reply_len(&r[..n]), Ok(None), "{n} bytes");
        }
        // Headers of the first object only: the second's length is not known yet.
        assert_eq!(reply_len(&r[..9]), Ok(None));
        assert_eq!(reply_len(&r[..r.len() - 1]), Ok(Some(r.len())));
        assert_eq!(reply_len(&r), Ok(Some(r.len())));
        // A long first object: the second's header comes after its 200 bytes.
        let mut long = vec![0x2B, 0x0E, 1, 1, 0, 0, 2, 0, 200];
        long.extend(vec![b'x'; 200]);
        assert_eq!(reply_len(&long), Ok(None));
        // A second object that would take the reply past 253 bytes.
        long.extend([1, 100]);
        assert!(reply_len(&long).is_err());
    }

    #[test]
    fn reply_parses_into_objects() {
        let page = parse(&reply(0)).unwrap();
        assert_eq!(page.code, 1);
        assert_eq!(page.conformity, 1);
        assert!(!page.more_follows);
        let id = Identification {
            conformity: page.conformity,
            objects: page.objects,
        };
        assert_eq!(id.text(VENDOR_NAME).as_deref(), Some("ACME"));
        assert_eq!(id.text(PRODUCT_CODE).as_deref(), Some("PM10"));
        assert_eq!(id.text(REVISION).as_deref(), Some("1.2"));
        assert_eq!(id.text(3), None);
        assert!(parse(&reply(0xFF)).unwrap().more_follows);
    }

    #[test]
    fn malformed_replies_are_refused() {
        assert!(
            parse(&reply(0x01)).is_err(),
            "more-follows neither 00 nor FF"
        );
        let r = reply(0);
        assert!(parse(&r[..r.len() - 1]).is_err(), "short");
        let mut extra = r.clone();
        extra.push(0);
        assert!(parse(&extra).is_err(), "extra byte");
        assert!(
            parse(&[0x2B, 0x0D, 1, 1, 0, 0, 0]).is_err(),
            "other MEI type"
        );
        assert!(parse(&[0x03, 2, 0, 0]).is_err(), "other function");
    }
}
