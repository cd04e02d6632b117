//! Pure helpers: summaries of samples, ratios, the order contenders run in.

/// Median, minimum and maximum of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    /// `None` for no samples. The median of an even count is the mean of the middle two.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
        Some(Summary { median, min: sorted[0], max: sorted[n - 1], n })
    }
}

/// Element-wise ratios of two equally long sample lists (round by round: the samples of one
/// round ran next to each other, so their ratio is less exposed to drifts in the machine's load).
pub fn paired_ratios(numerator: &[f64], denominator: &[f64]) -> Vec<f64> {
    numerator.iter().zip(denominator).filter(|(_, d)| **d != 0.0).map(|(n, d)| n / d).collect()
}

/// The order of `n` contenders in round `round`: forwards in even rounds, backwards in odd ones
/// (ABC CBA ABC ...), so that none always runs first, right after a slow neighbour, or last.
pub fn round_order(n: usize, round: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

/// A number with three significant digits, as the table prints it.
pub fn fmt3(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[3.0, 1.0, 2.0]), Some(Summary { median: 2.0, min: 1.0, max: 3.0, n: 3 }));
        assert_eq!(Summary::of(&[4.0, 1.0, 2.0, 3.0]), Some(Summary { median: 2.5, min: 1.0, max: 4.0, n: 4 }));
        assert_eq!(Summary::of(&[7.0]).unwrap().median, 7.0);
    }

    #[test]
    fn ratios_and_orders() {
        assert_eq!(paired_ratios(&[2.0, 3.0, 1.0], &[1.0, 0.0, 4.0]), vec![2.0, 0.25]);
        assert_eq!(round_order(3, 0), vec![0, 1, 2]);
        assert_eq!(round_order(3, 1), vec![2, 1, 0]);
        assert_eq!(round_order(3, 2), vec![0, 1, 2]);
        assert_eq!(fmt3(123.456), "123");
        assert_eq!(fmt3(12.345), "12.3");
        assert_eq!(fmt3(1.2345), "1.23");
        assert_eq!(fmt3(0.12345), "0.123");
    }
}
