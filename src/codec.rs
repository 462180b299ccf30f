//! Reading binary records field by field (signed DHT records, group log entries): fixed-size
//! big-endian integers and byte strings, where running short is an error, never a panic.

/// The input ended before a field did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the input ends inside a field")]
pub struct Short;

/// Reads fields from the front of a byte slice.
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Short> {
        if self.0.len() < n {
            return Err(Short);
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Short> {
        Ok(self.bytes(N)?.try_into().expect("N bytes"))
    }

    pub fn u8(&mut self) -> Result<u8, Short> {
        Ok(self.bytes(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, Short> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, Short> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A byte string after its one-byte length.
    pub fn short_bytes(&mut self) -> Result<&'a [u8], Short> {
        let n = usize::from(self.u8()?);
        self.bytes(n)
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_in_order_and_short_input_is_an_error() {
        let mut r = Reader(&[1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 2, 9, 9, 7]);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u16(), Ok(2));
        assert_eq!(r.u64(), Ok(3));
        assert_eq!(r.short_bytes(), Ok(&[9u8, 9][..]));
        assert_eq!(r.u16(), Err(Short));
        assert_eq!(r.u8(), Ok(7));
        assert!(r.is_empty());
    }
}
