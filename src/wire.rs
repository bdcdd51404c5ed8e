//! Protobuf's wire format, as far as the client writes and reads it by hand:
//! lengths, varints, length-delimited fields, and a reader of fields.

/// The encoded size of `value` as a protobuf varint.
#[inline]
pub(crate) fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// The bytes a length-delimited field of `size` bytes takes with a
/// one-byte tag: an envelope inside an `EnvelopeBatch`, a string in an envelope.
#[inline]
pub(crate) fn framed_len(size: usize) -> usize {
    1 + varint_len(size as u64) + size
}

/// Appends a field's tag: its number and wire type.
#[inline(always)]
pub(crate) fn put_tag(out: &mut Vec<u8>, field: u32, wire_type: u32) {
    put_varint(out, u64::from((field << 3) | wire_type));
}

/// Writes `value` as a varint into `out`; how many bytes it took.
#[inline(always)]
pub(crate) fn write_varint(out: &mut [u8; 10], mut value: u64) -> usize {
    let mut len = 0;
    while value >= 0x80 {
        out[len] = (value as u8) | 0x80;
        value >>= 7;
        len += 1;
    }
    out[len] = value as u8;
    len + 1
}

/// Appends `value` as a varint. Envelopes are built on the emitting
/// thread, a few of these each: one bounds check, not one a byte.
#[inline(always)]
pub(crate) fn put_varint(out: &mut Vec<u8>, value: u64) {
    if value < 0x80 {
        out.push(value as u8);
        return;
    }
    let mut encoded = [0u8; 10];
    let len = write_varint(&mut encoded, value);
    out.extend_from_slice(&encoded[..len]);
}

/// Appends a length-delimited field (a string or bytes).
#[inline(always)]
pub(crate) fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    out.reserve(framed_len(bytes.len()) + 4);
    put_tag(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Appends an entry of an envelope's `tags` map (field 9): a message of
/// the key (1) and the value (2).
#[inline(always)]
pub(crate) fn put_tag_entry(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    out.reserve(framed_len(framed_len(key.len()) + framed_len(value.len())));
    put_tag_entry_head(out, key, value.len());
    out.extend_from_slice(value);
}

/// Appends a `tags` map entry up to its value, a value of `value_len`
/// bytes: what follows is the value.
#[inline(always)]
pub(crate) fn put_tag_entry_head(out: &mut Vec<u8>, key: &[u8], value_len: usize) {
    put_tag(out, 9, 2);
    put_varint(out, (framed_len(key.len()) + framed_len(value_len)) as u64);
    put_bytes(out, 1, key);
    put_tag(out, 2, 2);
    put_varint(out, value_len as u64);
}

/// Walks the fields of an encoded message: each tag with its contents (a
/// varint's own bytes, a length-delimited field's contents).
pub(crate) struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    #[inline]
    pub(crate) fn varint(&mut self) -> Option<u64> {
        // Tags and short lengths, most of what is read, take one byte.
        if let Some((&byte, rest)) = self.0.split_first()
            && byte < 0x80
        {
            self.0 = rest;
            return Some(u64::from(byte));
        }
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.0.split_first()?;
            self.0 = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(value);
            }
        }
        None
    }

    #[inline]
    pub(crate) fn field(&mut self) -> Option<(u64, &'a [u8])> {
        let tag = self.varint()?;
        let contents = match tag & 7 {
            0 => {
                let rest = self.0;
                self.varint()?;
                &rest[..rest.len() - self.0.len()]
            }
            1 => self.take(8)?,
            2 => {
                let len = usize::try_from(self.varint()?).ok()?;
                self.take(len)?
            }
            5 => self.take(4)?,
            _ => return None,
        };
        Some((tag, contents))
    }

    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if len > self.0.len() {
            return None;
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths_match_what_put_varint_writes() {
        for value in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
            assert_eq!(Reader(&out).varint(), Some(value));
        }
        assert_eq!(varint_len(u64::MAX), 10);
    }
}
