//! Concrete node assignment for a run that starts now, on the fewest nodes.
//!
//! Runs only ever start at `now`, so a node's free GPUs now bound its free GPUs over the whole
//! run (runs in progress only end). Small gangs go best-fit, onto the fullest node that still
//! holds them, which keeps whole nodes free for the large gangs.

use super::context::Pool;
use crate::scenario::Node;

/// Picks nodes of `pool` for `gpus` GPUs given the GPUs in use per node; `None` if they do not fit.
pub fn assign(pool: &Pool, nodes: &[Node], used: &[u32], gpus: u32) -> Option<Vec<(usize, u32)>> {
    let free = |n: usize| nodes[n].gpus.saturating_sub(used[n]);
    if gpus <= pool.per_node {
        return pool
            .nodes
            .iter()
            .copied()
            .filter(|&n| free(n) >= gpus)
            .min_by_key(|&n| (free(n), n))
            .map(|n| vec![(n, gpus)]);
    }
    let k = gpus.div_ceil(pool.per_node) as usize;
    let mut by_free: Vec<usize> = pool
        .nodes
        .iter()
        .copied()
        .filter(|&n| free(n) > 0)
        .collect();
    by_free.sort_by_key(|&n| (std::cmp::Reverse(free(n)), n));
    by_free.truncate(k);
    if by_free.len() < k || by_free.iter().map(|&n| free(n)).sum::<u32>() < gpus {
        return None;
    }
    let mut left = gpus;
    let mut out = Vec::with_capacity(k);
    for n in by_free {
        let take = free(n).min(left).min(pool.per_node);
        if take > 0 {
            out.push((n, take));
            left -= take;
        }
    }
    (left == 0).then_some(out)
}

/// Marks an assignment as in use.
pub fn take(used: &mut [u32], assignment: &[(usize, u32)]) {
    for &(n, g) in assignment {
        used[n] += g;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> (Pool, Vec<Node>) {
        let nodes: Vec<Node> = (0..n)
            .map(|i| Node {
                name: format!("z-a-{i}"),
                zone: 0,
                accelerator: 0,
                gpus: 8,
            })
            .collect();
        (
            Pool {
                zone: 0,
                accelerator: 0,
                nodes: (0..n).collect(),
                per_node: 8,
                total: 8 * n as u32,
            },
            nodes,
        )
    }

    #[test]
    fn small_gangs_go_best_fit() {
        let (p, nodes) = pool(3);
        let used = [2, 6, 0];
        assert_eq!(assign(&p, &nodes, &used, 2), Some(vec![(1, 2)]));
        assert_eq!(assign(&p, &nodes, &used, 3), Some(vec![(0, 3)]));
        assert_eq!(assign(&p, &nodes, &used, 8), Some(vec![(2, 8)]));
        assert_eq!(assign(&p, &nodes, &[8, 8, 8], 1), None);
    }

    #[test]
    fn large_gangs_take_the_fewest_nodes() {
        let (p, nodes) = pool(3);
        assert_eq!(
            assign(&p, &nodes, &[0, 0, 0], 16),
            Some(vec![(0, 8), (1, 8)])
        );
        assert_eq!(
            assign(&p, &nodes, &[0, 4, 0], 12),
            Some(vec![(0, 8), (2, 4)])
        );
        // 16 GPUs free in all, but not on two nodes
        assert_eq!(assign(&p, &nodes, &[0, 4, 4], 16), None);
    }
}
