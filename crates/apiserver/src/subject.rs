//! The identity in an X.509 subject, read one way for every component that reads one: the
//! client-certificate authenticator ([`crate::auth::identity_from_cert`]) and the CSR
//! admission and signer ([`crate::certificates`]). At most one common name (the user), every
//! organization (the groups), each in whichever ASN.1 string type carries it; a subject that
//! could be read two ways (two CNs, a CN or O in a multi-valued RDN, a CN or O that is no
//! valid string) is refused rather than read.

use x509_parser::asn1_rs::{Any, Tag};
use x509_parser::oid_registry::{OID_X509_COMMON_NAME, OID_X509_ORGANIZATION_NAME};
use x509_parser::x509::X509Name;

/// The identity a subject names: its one common name (possibly empty) and its organizations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// The common name (CN), empty when there is none.
    pub common_name: String,
    /// Every organization (O), in order.
    pub organizations: Vec<String>,
}

/// A subject that is not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// More than one CN: Go's x509 takes the last, other readers the first.
    #[error("the subject may hold at most one common name (CN)")]
    TwoCommonNames,
    /// A CN or O beside another attribute in one RDN.
    #[error(
        "the subject may not hold a common name (CN) or organization (O) in a multi-valued RDN"
    )]
    MultiValued,
    /// A CN or O that is no string, or no valid one of its type.
    #[error("the subject's {0} must be a string")]
    NotAString(&'static str),
}

/// Reads the identity of a subject (see the module).
pub fn read(name: &X509Name<'_>) -> Result<Subject, SubjectError> {
    let mut common_names = Vec::new();
    let mut organizations = Vec::new();
    for rdn in name.iter() {
        let multi_valued = rdn.iter().count() > 1;
        for attribute in rdn.iter() {
            let (label, into) = if *attribute.attr_type() == OID_X509_COMMON_NAME {
                ("CN", &mut common_names)
            } else if *attribute.attr_type() == OID_X509_ORGANIZATION_NAME {
                ("O", &mut organizations)
            } else {
                continue;
            };
            if multi_valued {
                return Err(SubjectError::MultiValued);
            }
            let text =
                attribute_text(attribute.attr_value()).ok_or(SubjectError::NotAString(label))?;
            into.push(text);
        }
    }
    if common_names.len() > 1 {
        return Err(SubjectError::TwoCommonNames);
    }
    Ok(Subject {
        common_name: common_names.pop().unwrap_or_default(),
        organizations,
    })
}

/// Go's PrintableString set (with `*` and `&`, which Go's x509 accepts).
fn printable(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b" '()+,-./:=?*&".contains(&b)
}

/// An attribute value as text, from any ASN.1 string type a subject may use, as Go's x509
/// (which upstream's authenticator and admission use) decodes them: UTF8String (valid UTF-8),
/// PrintableString, IA5String, NumericString and VisibleString (their character sets),
/// TeletexString (as Latin-1), BMPString (UTF-16BE, one trailing NUL dropped) and
/// UniversalString (UTF-32BE). A value outside its type's rules is `None`.
pub fn attribute_text(value: &Any<'_>) -> Option<String> {
    let data = value.data;
    let ascii = |allowed: fn(u8) -> bool| {
        data.iter()
            .all(|b| allowed(*b))
            .then(|| String::from_utf8_lossy(data).into_owned())
    };
    match value.tag() {
        Tag::Utf8String => std::str::from_utf8(data).ok().map(str::to_string),
        Tag::PrintableString => ascii(printable),
        Tag::Ia5String => ascii(|b| b.is_ascii()),
        Tag::NumericString => ascii(|b| b.is_ascii_digit() || b == b' '),
        Tag::VisibleString => ascii(|b| (0x20..0x7f).contains(&b)),
        Tag::TeletexString => Some(data.iter().map(|b| char::from(*b)).collect()),
        Tag::BmpString => {
            if !data.len().is_multiple_of(2) {
                return None;
            }
            let data = data.strip_suffix(&[0, 0]).unwrap_or(data);
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        Tag::UniversalString => {
            if !data.len().is_multiple_of(4) {
                return None;
            }
            data.chunks_exact(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::FromDer;

    const CN: &[u8] = &[0x55, 0x04, 0x03];
    const O: &[u8] = &[0x55, 0x04, 0x0a];
    const OU: &[u8] = &[0x55, 0x04, 0x0b];

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            out.extend([0x82, (len >> 8) as u8, len as u8]);
        }
        out.extend_from_slice(content);
        out
    }

    /// One attribute: (OID bytes, value tag, value bytes).
    type Atv<'a> = (&'a [u8], u8, &'a [u8]);

    /// A Name of RDNs, each a set of attributes.
    fn name(rdns: &[&[Atv<'_>]]) -> Vec<u8> {
        let mut seq = Vec::new();
        for rdn in rdns {
            let mut set = Vec::new();
            for (oid, tag, value) in *rdn {
                let mut atv = tlv(0x06, oid);
                atv.extend(tlv(*tag, value));
                set.extend(tlv(0x30, &atv));
            }
            seq.extend(tlv(0x31, &set));
        }
        tlv(0x30, &seq)
    }

    fn read_der(der: &[u8]) -> Result<Subject, SubjectError> {
        let (_, parsed) = X509Name::from_der(der).map_err(|_| SubjectError::NotAString("DER"))?;
        read(&parsed)
    }

    fn bmp(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_be_bytes).collect()
    }

    #[test]
    fn one_cn_and_every_organization_in_every_string_type() {
        let masters = "system:masters";
        let universal: Vec<u8> = masters
            .chars()
            .flat_map(|c| u32::from(c).to_be_bytes())
            .collect();
        let mut bmp_nul = bmp("ops");
        bmp_nul.extend([0, 0]);
        let der = name(&[
            &[(CN, 0x0c, b"alice")],
            &[(O, 0x1e, &bmp(masters))],
            &[(O, 0x1c, &universal)],
            &[(O, 0x14, b"t\xe9am")],
            &[(O, 0x13, b"dev")],
            &[(O, 0x16, b"ia5")],
            &[(O, 0x1e, &bmp_nul)],
            &[(OU, 0x0c, b"ignored")],
        ]);
        assert_eq!(
            read_der(&der),
            Ok(Subject {
                common_name: "alice".into(),
                organizations: vec![
                    masters.into(),
                    masters.into(),
                    "téam".into(),
                    "dev".into(),
                    "ia5".into(),
                    "ops".into(),
                ],
            })
        );
    }

    #[test]
    fn ambiguous_subjects_are_refused() {
        let two_cns = name(&[&[(CN, 0x0c, b"alice")], &[(CN, 0x0c, b"system:admin")]]);
        assert_eq!(read_der(&two_cns), Err(SubjectError::TwoCommonNames));
        for rdn in [
            &[(CN, 0x0c, &b"alice"[..]), (OU, 0x0c, b"x")][..],
            &[(OU, 0x0c, b"x"), (O, 0x0c, b"system:masters")],
        ] {
            let der = name(&[&[(CN, 0x0c, b"bob")], rdn]);
            assert_eq!(read_der(&der), Err(SubjectError::MultiValued));
        }
        // A multi-valued RDN without CN or O is not read at all.
        let other = name(&[&[(CN, 0x0c, b"bob")], &[(OU, 0x0c, b"x"), (OU, 0x0c, b"y")]]);
        assert_eq!(read_der(&other).map(|s| s.common_name), Ok("bob".into()));
        for (tag, value, label) in [
            (0x02, &b"\x01"[..], "CN"),        // an INTEGER
            (0x0c, b"\xff\xfe", "CN"),         // not UTF-8
            (0x13, b"system_masters", "CN"),   // '_' is not printable
            (0x16, b"caf\xc3\xa9", "CN"),      // not IA5
            (0x12, b"12a", "CN"),              // not numeric
            (0x1e, b"\x00a\x00", "CN"),        // odd BMP
            (0x1e, b"\xd8\x00", "CN"),         // a lone surrogate
            (0x1c, b"\x00\x11\x00\x00", "CN"), // past U+10FFFF
        ] {
            let der = name(&[&[(CN, tag, value)]]);
            assert_eq!(
                read_der(&der),
                Err(SubjectError::NotAString(label)),
                "{tag:#x}"
            );
        }
        let der = name(&[&[(CN, 0x0c, b"bob")], &[(O, 0x04, b"system:masters")]]);
        assert_eq!(read_der(&der), Err(SubjectError::NotAString("O")));
    }
}
