//! RaptorQ (RFC 6330, `raptorq` crate) for file blocks (`protocols/data-v1.md` §2 FILE_CHUNK, §6):
//! each block is one RaptorQ object with a single source block, symbols of a fixed size, packets
//! serialised as `payload_id:[4] ‖ symbol`.
//!
//! Every parameter that comes from a peer is checked here before `raptorq` sees it: the crate asserts
//! on symbol counts and indexes decoders by the packet's source block number.

use raptorq::{
    Decoder, EncodingPacket, ObjectTransmissionInformation, PayloadId, SourceBlockEncoder,
};

/// Symbols per block at most (RFC 6330 allows 56 403; we stay far below).
pub const MAX_SYMBOLS_PER_BLOCK: u64 = 8192;
/// Symbol alignment: symbol sizes are multiples of it.
pub const ALIGNMENT: u8 = 8;
/// Serialised payload id in front of every symbol.
pub const PAYLOAD_ID_LEN: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("symbol size {0} is not 64 … 8192 and a multiple of 8")]
    SymbolSize(u16),
    #[error(
        "block of {len} bytes needs more than {MAX_SYMBOLS_PER_BLOCK} symbols of {symbol_size} bytes"
    )]
    TooManySymbols { len: u64, symbol_size: u16 },
    #[error("empty block")]
    EmptyBlock,
    #[error("packet bytes are not a whole number of {0}-byte packets")]
    PacketLength(usize),
    #[error("packet for source block {0}; blocks have exactly one")]
    SourceBlock(u8),
    #[error("packet id {0} beyond any symbol this block can have")]
    SymbolId(u32),
    #[error("the multipath sample did not decode")]
    SampleUndecodable,
}

/// Checks a block layout that may come from a peer.
pub fn check(block_len: u64, symbol_size: u16) -> Result<(), Error> {
    if !(64..=8192).contains(&symbol_size) || !symbol_size.is_multiple_of(u16::from(ALIGNMENT)) {
        return Err(Error::SymbolSize(symbol_size));
    }
    if block_len == 0 {
        return Err(Error::EmptyBlock);
    }
    if block_len.div_ceil(u64::from(symbol_size)) > MAX_SYMBOLS_PER_BLOCK {
        return Err(Error::TooManySymbols {
            len: block_len,
            symbol_size,
        });
    }
    Ok(())
}

fn oti(block_len: u64, symbol_size: u16) -> ObjectTransmissionInformation {
    ObjectTransmissionInformation::new(block_len, symbol_size, 1, 1, ALIGNMENT)
}

/// Size of one serialised packet.
pub fn packet_len(symbol_size: u16) -> usize {
    PAYLOAD_ID_LEN + usize::from(symbol_size)
}

/// Encodes a block: its source packets and `repair_per_mille` ‰ as many repair packets, serialised
/// back to back.
///
/// RaptorQ is systematic: source packet `i` is symbol `i` of the (zero-padded) block with payload id
/// `(0, i)`, so without repair no encoding work is needed. With repair, `SourceBlockEncoder::new`
/// uses the crate's cached encoding plan (`Encoder::new` would regenerate it for every block).
pub fn encode_block(
    data: &[u8],
    symbol_size: u16,
    repair_per_mille: u16,
) -> Result<Vec<u8>, Error> {
    let len = data.len() as u64;
    check(len, symbol_size)?;
    let t = usize::from(symbol_size);
    let source = data.len().div_ceil(t);
    let repair =
        u32::try_from(source as u64 * u64::from(repair_per_mille.min(1000)) / 1000).unwrap_or(0);
    let mut out = Vec::with_capacity((source + repair as usize) * packet_len(symbol_size));
    for (i, symbol) in data.chunks(t).enumerate() {
        let esi = u32::try_from(i).expect("≤ 8192 symbols");
        out.extend_from_slice(&PayloadId::new(0, esi).serialize());
        out.extend_from_slice(symbol);
        out.resize(out.len() + t - symbol.len(), 0); // the last symbol is zero-padded
    }
    if repair > 0 {
        let mut padded = data.to_vec();
        padded.resize(source * t, 0);
        let encoder = SourceBlockEncoder::new(0, &oti(len, symbol_size), &padded);
        for p in encoder.repair_packets(0, repair) {
            out.extend_from_slice(&p.payload_id().serialize());
            out.extend_from_slice(p.data());
        }
    }
    Ok(out)
}

/// Collects packets of one block until it can be decoded.
pub struct BlockDecoder {
    decoder: Decoder,
    symbol_size: u16,
    max_symbol_id: u32,
    done: Option<Vec<u8>>,
}

impl BlockDecoder {
    pub fn new(block_len: u64, symbol_size: u16) -> Result<Self, Error> {
        check(block_len, symbol_size)?;
        let source = u32::try_from(block_len.div_ceil(u64::from(symbol_size))).expect("≤ 8192");
        Ok(Self {
            decoder: Decoder::new(oti(block_len, symbol_size)),
            symbol_size,
            // Source symbols, then at most as many repair symbols again (repair ≤ 1000 ‰).
            max_symbol_id: source * 2 + 16,
            done: None,
        })
    }

    /// Adds serialised packets; returns the block once it is decodable (and again on later calls).
    pub fn push(&mut self, packets: &[u8]) -> Result<Option<&[u8]>, Error> {
        let plen = packet_len(self.symbol_size);
        if !packets.len().is_multiple_of(plen) {
            return Err(Error::PacketLength(plen));
        }
        for p in packets.chunks_exact(plen) {
            if self.done.is_some() {
                break;
            }
            let (sbn, esi) = (p[0], u32::from_be_bytes([0, p[1], p[2], p[3]]));
            if sbn != 0 {
                return Err(Error::SourceBlock(sbn));
            }
            if esi > self.max_symbol_id {
                return Err(Error::SymbolId(esi));
            }
            if let Some(data) = self.decoder.decode(EncodingPacket::deserialize(p)) {
                self.done = Some(data);
            }
        }
        Ok(self.done.as_deref())
    }
}

/// Bytes of the sample payload a multipath plan is tried on.
pub const SAMPLE_BYTES: usize = 16 * 1024;

/// Packets of one path in a multipath sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathShare {
    pub total: u32,
    pub repair: u32,
}

/// The outcome of [`multipath_sample`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub symbol_size: u16,
    /// Per path, in the order given; the first is the primary path.
    pub shares: Vec<PathShare>,
    /// Source packets dropped before the decode check.
    pub lost: u32,
}

/// RaptorQ-encodes a random [`SAMPLE_BYTES`] payload into packets of `mtu` bytes (4-byte payload
/// id + symbol) with `repair_per_mille` ‰ repair, spreads the source packets round-robin across
/// `paths` paths and the repair packets across all but the first (the primary; a single path
/// carries its own repair), then checks that the payload decodes with all but two of the repair
/// packets' worth of source packets lost (`protocols/assist.md` §4.5).
pub fn multipath_sample(mtu: u16, repair_per_mille: u16, paths: usize) -> Result<Sample, Error> {
    let symbol_size =
        (mtu.saturating_sub(PAYLOAD_ID_LEN as u16) / u16::from(ALIGNMENT)) * u16::from(ALIGNMENT);
    let mut data = vec![0u8; SAMPLE_BYTES];
    rand::fill(&mut data[..]);
    let packets = encode_block(&data, symbol_size, repair_per_mille)?;
    let plen = packet_len(symbol_size);
    let source = SAMPLE_BYTES.div_ceil(usize::from(symbol_size));
    let all: Vec<&[u8]> = packets.chunks(plen).collect();
    let repair = all.len() - source;
    let n = paths.max(1);
    let mut shares = vec![
        PathShare {
            total: 0,
            repair: 0
        };
        n
    ];
    for i in 0..source {
        shares[i % n].total += 1;
    }
    for i in 0..repair {
        let path = if n == 1 { 0 } else { 1 + i % (n - 1) };
        shares[path].total += 1;
        shares[path].repair += 1;
    }
    let lost = repair.saturating_sub(2);
    let kept: Vec<u8> = all[lost..].iter().flat_map(|p| p.iter().copied()).collect();
    let mut decoder = BlockDecoder::new(SAMPLE_BYTES as u64, symbol_size)?;
    if decoder.push(&kept)? != Some(&data[..]) {
        return Err(Error::SampleUndecodable);
    }
    Ok(Sample {
        symbol_size,
        shares,
        lost: u32::try_from(lost).unwrap_or(u32::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 255) as u8).collect()
    }

    #[test]
    fn blocks_round_trip_with_and_without_loss() {
        for (len, sym, repair) in [
            (100_000, 1024, 0),
            (1 << 20, 1024, 0),
            (5000, 64, 300),
            (65_536, 512, 500),
        ] {
            let d = data(len);
            let packets = encode_block(&d, sym, repair).unwrap();
            let plen = packet_len(sym);
            let all: Vec<&[u8]> = packets.chunks(plen).collect();
            // Without loss.
            let mut dec = BlockDecoder::new(len as u64, sym).unwrap();
            assert_eq!(dec.push(&packets).unwrap().unwrap(), &d[..]);
            if repair > 0 {
                // Lose every fifth packet: the repair packets make up for it.
                let kept: Vec<u8> = all
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % 5 != 0)
                    .flat_map(|(_, p)| p.iter().copied())
                    .collect();
                let mut dec = BlockDecoder::new(len as u64, sym).unwrap();
                assert_eq!(
                    dec.push(&kept).unwrap().unwrap(),
                    &d[..],
                    "len {len} with loss"
                );
            }
        }
    }

    #[test]
    fn multipath_sample_keeps_repair_off_the_primary_path() {
        let s = multipath_sample(1152, 350, 3).unwrap();
        assert_eq!(s.symbol_size, 1144);
        let source = SAMPLE_BYTES.div_ceil(1144) as u32; // 15
        let repair = source * 350 / 1000; // 5
        assert_eq!(
            s.shares.iter().map(|p| p.total).sum::<u32>(),
            source + repair
        );
        assert_eq!(s.shares[0].repair, 0);
        assert_eq!(s.shares.iter().map(|p| p.repair).sum::<u32>(), repair);
        assert_eq!(s.lost, repair - 2);
        let single = multipath_sample(576, 1000, 1).unwrap();
        assert_eq!(single.shares[0].repair, single.shares[0].total / 2);
    }

    #[test]
    fn hostile_parameters_and_packets_are_errors_not_panics() {
        assert!(BlockDecoder::new(1 << 30, 64).is_err(), "too many symbols");
        assert!(BlockDecoder::new(100, 63).is_err());
        assert!(BlockDecoder::new(100, 0).is_err());
        assert!(BlockDecoder::new(0, 64).is_err());
        let mut dec = BlockDecoder::new(1000, 64).unwrap();
        assert!(dec.push(&[0u8; 67]).is_err(), "partial packet");
        let mut bad = vec![0u8; 68];
        bad[0] = 3;
        assert_eq!(dec.push(&bad).unwrap_err(), Error::SourceBlock(3));
        let mut far = vec![0u8; 68];
        far[1..4].copy_from_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(dec.push(&far), Err(Error::SymbolId(_))));
    }
}
