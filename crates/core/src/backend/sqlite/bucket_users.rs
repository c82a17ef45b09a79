//! The distinct users of each rollup bucket (`rollup_users`): one row per bucket whose blob
//! holds the HyperLogLog registers that are set, as sorted `(register: u16 big-endian,
//! rank: u8)` triples. A batch reads and rewrites one row per bucket it touches, whatever its
//! number of users; a bucket with `n` users costs at most `3 n` bytes (49,152 at most).

use std::collections::BTreeMap;

use foldhash::HashMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::error::StoreResult;
use crate::analytics::hll;

/// The registers of a blob; a trailing partial triple (a damaged row) is ignored.
pub(super) fn decode(blob: &[u8]) -> BTreeMap<u16, u8> {
    blob.chunks_exact(3)
        .map(|t| (u16::from_be_bytes([t[0], t[1]]), t[2]))
        .collect()
}

fn encode(registers: &BTreeMap<u16, u8>) -> Vec<u8> {
    let mut blob = Vec::with_capacity(registers.len() * 3);
    for (register, rank) in registers {
        blob.extend_from_slice(&register.to_be_bytes());
        blob.push(*rank);
    }
    blob
}

/// Adds users to their buckets' registers, one read and one write per bucket.
pub(super) fn add(c: &Connection, users: &HashMap<&str, Vec<&str>>) -> StoreResult<()> {
    let mut read = c.prepare_cached("SELECT registers FROM rollup_users WHERE map = ?1")?;
    let mut write = c.prepare_cached(
        "INSERT INTO rollup_users (map, registers) VALUES (?1, ?2)
         ON CONFLICT (map) DO UPDATE SET registers = excluded.registers",
    )?;
    for (map, users) in users {
        let stored: Option<Vec<u8>> = read.query_row([map], |r| r.get(0)).optional()?;
        let mut changed = stored.is_none();
        let mut registers = stored.as_deref().map(decode).unwrap_or_default();
        for user in users {
            let (register, rank) = hll::position(user);
            let r = registers.entry(register as u16).or_insert(0);
            if rank > *r {
                *r = rank;
                changed = true;
            }
        }
        if changed {
            write.execute(params![map, encode(&registers)])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_round_trip_and_a_damaged_tail_is_ignored() {
        let registers: BTreeMap<u16, u8> = [(0, 3), (513, 7), (16_383, 51)].into();
        let mut blob = encode(&registers);
        assert_eq!(decode(&blob), registers);
        blob.push(9);
        assert_eq!(decode(&blob), registers);
    }
}
