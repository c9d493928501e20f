//! A SHA-256 merkle tree over the blocks of one chunk, so every block can be checked on
//! arrival, from whichever peer sent it, against a root the tracker handed out.
//!
//! The tree is RFC 6962's (Certificate Transparency): a leaf is `SHA-256(0x00 ‖ block)`,
//! an inner node `SHA-256(0x01 ‖ left ‖ right)`, and a tree of `n` leaves splits at the
//! largest power of two below `n` (no padding). The prefixes keep a leaf from ever passing
//! for an inner node, so nobody can make up a "block" out of two hashes.
//!
//! Leaf hashes travel in *batches*: `BATCH` consecutive leaves starting at a multiple of
//! `BATCH` (the last batch shorter). Such a batch is always one node of the tree (proof in
//! [`batch_proof`]), so it comes with the roots of its siblings on the way up, and the
//! receiver checks the batch against the chunk's root without knowing any other leaf.
//! A chunk of up to `BATCH` blocks is one batch and needs no proof at all.
//!
//! Pure: no I/O, no state.

use sha2::{Digest as _, Sha256};
use wire::Digest;

/// Leaves per batch of hashes a peer sends (16 KiB of hashes, 128 MiB of chunk at
/// 256 KiB blocks): a power of two.
pub const BATCH: u32 = 512;

/// The hash of one block.
pub fn leaf(block: &[u8]) -> Digest {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(block);
    Digest(h.finalize().into())
}

fn node(left: &Digest, right: &Digest) -> Digest {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left.0);
    h.update(right.0);
    Digest(h.finalize().into())
}

/// Largest power of two strictly below `n` (`n >= 2`).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The root of a tree over `leaves`; `None` for no leaves (a chunk is never empty).
pub fn root(leaves: &[Digest]) -> Option<Digest> {
    match leaves.len() {
        0 => None,
        1 => Some(leaves[0]),
        n => {
            let k = split(n);
            Some(node(&root(&leaves[..k])?, &root(&leaves[k..])?))
        }
    }
}

/// Leaves `first..first + len` of a tree of `n` leaves that batch `batch` covers, if it
/// exists.
pub fn batch_range(n: u32, batch: u32) -> Option<(u32, u32)> {
    range(n, batch, BATCH)
}

/// [`batch_range`] for batches of `per` leaves (a power of two).
fn range(n: u32, batch: u32, per: u32) -> Option<(u32, u32)> {
    let first = batch.checked_mul(per)?;
    (first < n).then(|| (first, per.min(n - first)))
}

/// How many batches a tree of `n` leaves has.
pub fn batch_count(n: u32) -> u32 {
    n.div_ceil(BATCH)
}

/// The roots of the siblings on the way from batch `batch`'s node up to the root, top
/// first: what proves the batch against the root. `None` if there is no such batch.
pub fn batch_proof(leaves: &[Digest], batch: u32) -> Option<Vec<Digest>> {
    proof(leaves, batch, BATCH)
}

fn proof(leaves: &[Digest], batch: u32, per: u32) -> Option<Vec<Digest>> {
    let (first, len) = range(u32::try_from(leaves.len()).ok()?, batch, per)?;
    let (first, len) = (first as usize, len as usize);
    let mut proof = Vec::new();
    let (mut lo, mut hi) = (0usize, leaves.len());
    while (lo, hi) != (first, first + len) {
        let k = lo + split(hi - lo);
        if first + len <= k {
            proof.push(root(&leaves[k..hi])?);
            hi = k;
        } else {
            proof.push(root(&leaves[lo..k])?);
            lo = k;
        }
    }
    Some(proof)
}

/// Whether `hashes`, claimed to be batch `batch` of a tree of `n` leaves, belong to the
/// tree with root `root`, as `proof` (from [`batch_proof`]) says. `n` must come from the
/// file's description, not from the sender: a proof alone does not fix the tree's size.
pub fn check_batch(root: &Digest, n: u32, batch: u32, hashes: &[Digest], proof: &[Digest]) -> bool {
    check(root, n, batch, BATCH, hashes, proof)
}

fn check(root: &Digest, n: u32, batch: u32, per: u32, hashes: &[Digest], proof: &[Digest]) -> bool {
    let Some((first, len)) = range(n, batch, per) else {
        return false;
    };
    if hashes.len() != len as usize {
        return false;
    }
    // Walk down to the batch's node, remembering on which side each sibling hangs.
    let (first, len) = (first as usize, len as usize);
    let (mut lo, mut hi) = (0usize, n as usize);
    let mut sides = Vec::with_capacity(proof.len());
    while (lo, hi) != (first, first + len) {
        if sides.len() == proof.len() {
            return false; // the proof is too short
        }
        let k = lo + split(hi - lo);
        if first + len <= k {
            sides.push(false); // sibling on the right
            hi = k;
        } else {
            sides.push(true); // sibling on the left
            lo = k;
        }
    }
    if sides.len() != proof.len() {
        return false; // too long
    }
    let Some(mut at) = self::root(hashes) else {
        return false;
    };
    for (sibling, left) in proof.iter().zip(sides).rev() {
        at = if left {
            node(sibling, &at)
        } else {
            node(&at, sibling)
        };
    }
    at == *root
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<Digest> {
        (0..n).map(|i| leaf(&(i as u64).to_le_bytes())).collect()
    }

    /// The same tree computed the slow, obvious way: RFC 6962's definition, bottom up
    /// over explicit subtrees.
    fn reference_root(l: &[Digest]) -> Digest {
        if l.len() == 1 {
            return l[0];
        }
        let mut k = 1;
        while k * 2 < l.len() {
            k *= 2;
        }
        node(&reference_root(&l[..k]), &reference_root(&l[k..]))
    }

    #[test]
    fn known_answer_rfc6962_empty_leaf() {
        // RFC 6962 test vector: the leaf hash of the empty string.
        let hex: String = leaf(b"").0.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn roots_match_the_definition_for_1_to_300_leaves() {
        assert_eq!(root(&[]), None);
        for n in 1..=300 {
            let l = leaves(n);
            assert_eq!(root(&l), Some(reference_root(&l)), "{n} leaves");
        }
    }

    /// Every batch of every tree of 1..300 leaves, for batch sizes from one leaf (a proof
    /// for every single leaf) up to more than the whole tree, proves itself; the wrong batch
    /// number or root, and a proof one short, one long or with any sibling
    /// changed, are refused.
    #[test]
    fn every_batch_of_every_tree_proves_itself_and_nothing_else() {
        for n in 1..=300u32 {
            let l = leaves(n as usize);
            let r = root(&l).unwrap();
            for per in [1, 2, 8, 64, 512] {
                let batches = n.div_ceil(per);
                for b in 0..batches {
                    let (first, len) = range(n, b, per).unwrap();
                    let got = &l[first as usize..(first + len) as usize];
                    let p = proof(&l, b, per).unwrap();
                    assert!(check(&r, n, b, per, got, &p), "n={n} per={per} batch {b}");
                    assert!(!check(&r, n, b + 1, per, got, &p));
                    assert!(!check(&leaf(b"x"), n, b, per, got, &p));
                    if !p.is_empty() {
                        assert!(!check(&r, n, b, per, got, &p[1..]));
                        assert!(!check(&r, n, b, per, got, &p[..p.len() - 1]));
                    }
                    let mut longer = p.clone();
                    longer.push(r);
                    assert!(!check(&r, n, b, per, got, &longer));
                    for i in 0..p.len() {
                        let mut bad = p.clone();
                        bad[i].0[31] ^= 0x80;
                        assert!(!check(&r, n, b, per, got, &bad), "n={n} b={b} i={i}");
                    }
                }
                assert_eq!(proof(&l, batches, per), None);
            }
        }
    }

    /// With the real batch size: big chunks prove every batch, the last one short.
    #[test]
    fn big_trees_prove_every_batch() {
        for n in [BATCH + 1, 2 * BATCH, 3 * BATCH - 7, 5 * BATCH + 1] {
            let l = leaves(n as usize);
            let r = root(&l).unwrap();
            for b in 0..batch_count(n) {
                let (first, len) = batch_range(n, b).unwrap();
                let got = &l[first as usize..(first + len) as usize];
                let p = batch_proof(&l, b).unwrap();
                assert!(!p.is_empty());
                assert!(check_batch(&r, n, b, got, &p), "n={n} batch {b}");
                let mut bad = got.to_vec();
                bad[len as usize - 1].0[0] ^= 1;
                assert!(!check_batch(&r, n, b, &bad, &p));
            }
        }
    }

    #[test]
    fn a_single_batch_needs_no_proof() {
        for n in [1, 2, 13, BATCH] {
            let l = leaves(n as usize);
            assert_eq!(batch_proof(&l, 0), Some(vec![]));
            assert!(check_batch(&root(&l).unwrap(), n, 0, &l, &[]));
        }
    }

    #[test]
    fn a_leaf_is_not_an_inner_node() {
        // Two leaves' hashes presented as one block do not hash to their parent.
        let (a, b) = (leaf(b"a"), leaf(b"b"));
        let mut both = a.0.to_vec();
        both.extend_from_slice(&b.0);
        assert_ne!(leaf(&both), root(&[a, b]).unwrap());
    }

    proptest! {
        /// Any change to any bit of any leaf of a batch is caught.
        #[test]
        fn tampered_leaves_are_refused(n in 1u32..300, shift in 0u32..9, pick in any::<u32>(), bit in 0usize..256) {
            let per = 1 << shift;
            let l = leaves(n as usize);
            let r = root(&l).unwrap();
            let b = pick % n.div_ceil(per);
            let (first, len) = range(n, b, per).unwrap();
            let mut got = l[first as usize..(first + len) as usize].to_vec();
            let i = pick as usize % got.len();
            got[i].0[bit / 8] ^= 1 << (bit % 8);
            let p = proof(&l, b, per).unwrap();
            prop_assert!(!check(&r, n, b, per, &got, &p));
        }
    }
}
