//! "Did you mean …?": the known name nearest to a word that names nothing, for messages about
//! typos (node attributes naming a boot config, head or secret; `base.ini` keys; CLI arguments).

/// The candidate nearest to `word`, when one is within edit distance 2 of it, ignoring case.
///
/// The distance counts insertions, deletions, substitutions and swaps of two adjacent
/// characters (`haed1` is 1 from `head1`). A candidate equal to `word` is no suggestion; one
/// differing only in case is (distance 0). A word is never "corrected" into a candidate that
/// shares less with it than it changes (`x` does not suggest `ab`). Among equally near
/// candidates the first wins, so callers pass them in a stable order (sorted).
pub fn did_you_mean<'a, I, S>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a S>,
    S: AsRef<str> + ?Sized + 'a,
{
    let w: Vec<char> = word.to_lowercase().chars().collect();
    let mut best: Option<(usize, &'a str)> = None;
    for c in candidates {
        let c = c.as_ref();
        if c == word {
            continue;
        }
        let cl: Vec<char> = c.to_lowercase().chars().collect();
        // More than 2 apart in length is more than 2 edits.
        if w.len().abs_diff(cl.len()) > 2 {
            continue;
        }
        let d = distance(&w, &cl);
        if d <= 2 && d < w.len().max(1) && best.is_none_or(|(b, _)| d < b) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// The optimal-string-alignment distance between two words.
fn distance(a: &[char], b: &[char]) -> usize {
    // Three rows: the one before last (for swaps), the last, and the current.
    let mut prev2: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur: Vec<usize> = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(prev2[j - 2] + 1);
            }
            cur[j] = d;
        }
        std::mem::swap(&mut prev2, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        let d = |a: &str, b: &str| distance(&a.chars().collect::<Vec<_>>(), &b.chars().collect::<Vec<_>>());
        assert_eq!(d("", ""), 0);
        assert_eq!(d("abc", ""), 3);
        assert_eq!(d("", "ab"), 2);
        assert_eq!(d("head1", "head1"), 0);
        assert_eq!(d("haed1", "head1"), 1, "a swap is one edit");
        assert_eq!(d("head", "head1"), 1);
        assert_eq!(d("kitten", "sitting"), 3);
        assert_eq!(d("näme", "name"), 1, "characters, not bytes");
    }

    #[test]
    fn suggests_the_nearest_within_two_edits() {
        let boots = ["xyzBoot", "compute", "gpuBoot"];
        assert_eq!(did_you_mean("noSuchBoot", &boots), None);
        assert_eq!(did_you_mean("xyzBot", &boots), Some("xyzBoot"));
        assert_eq!(did_you_mean("XYZBOOT", &boots), Some("xyzBoot"), "case is ignored");
        assert_eq!(did_you_mean("xyzBoot", &boots), None, "an exact name is no typo");
        assert_eq!(did_you_mean("cmopute", &boots), Some("compute"));
        assert_eq!(did_you_mean("gpuBoot2", &boots), Some("gpuBoot"));
        assert_eq!(did_you_mean("head.prot", &["head.name", "head.port", "head.ip"]), Some("head.port"));
        // The nearest wins; among equals the first.
        assert_eq!(did_you_mean("head2", &["head1", "head2x", "head3"]), Some("head1"));
        assert_eq!(did_you_mean("head9", &["head10", "head1"]), Some("head1"));
        // Short words are not turned into something else entirely.
        assert_eq!(did_you_mean("x", &["ab", "y"]), None);
        assert_eq!(did_you_mean("ab", &["cd"]), None);
        assert_eq!(did_you_mean("ab", &["abc"]), Some("abc"));
        // Any collection of strings.
        let owned: Vec<String> = vec!["head1".into()];
        assert_eq!(did_you_mean("haed1", &owned), Some("head1"));
        assert_eq!(did_you_mean("head1", Vec::<String>::new().iter()), None);
        assert_eq!(did_you_mean("", &["a"]), None);
    }
}
