//! Node selectors as administrators type them after `-i`: `n3`, `n3,n9`, `n[0-5,7]`,
//! `n[0-3],n9`, a MAC address or a node uid. Ranges are matched, never expanded, so
//! `n[0-4000000000]` costs nothing.

use std::ops::RangeInclusive;

/// One comma-separated term of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    /// An exact node name, MAC or uid; it must match a node.
    Exact(String),
    /// `prefix[ranges]suffix`: matches every existing node whose name is the prefix, a decimal
    /// number inside one of the ranges, and the suffix. It must match at least one node.
    Range { prefix: String, ranges: Vec<RangeInclusive<u64>>, suffix: String },
}

/// A parsed selector: the terms in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub terms: Vec<Term>,
}

/// Why a selector does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad node selector {input:?}: {reason}")]
pub struct SelectorError {
    pub input: String,
    pub reason: String,
}

impl Term {
    /// Whether a node with this name (and uid, and MACs) is selected by the term.
    pub fn matches(&self, name: &str, uid: &str, macs: &[String]) -> bool {
        match self {
            Term::Exact(s) => s == name || s == uid || macs.iter().any(|m| m.eq_ignore_ascii_case(s)),
            Term::Range { prefix, ranges, suffix } => {
                let Some(mid) = name.strip_prefix(prefix.as_str()).and_then(|r| r.strip_suffix(suffix.as_str())) else {
                    return false;
                };
                if mid.is_empty() || !mid.bytes().all(|b| b.is_ascii_digit()) || (mid.len() > 1 && mid.starts_with('0'))
                {
                    return false;
                }
                match mid.parse::<u64>() {
                    Ok(n) => ranges.iter().any(|r| r.contains(&n)),
                    Err(_) => false,
                }
            }
        }
    }
}

impl std::fmt::Display for Term {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Term::Exact(s) => f.write_str(s),
            Term::Range { prefix, ranges, suffix } => {
                let parts: Vec<String> = ranges
                    .iter()
                    .map(|r| {
                        if r.start() == r.end() { r.start().to_string() } else { format!("{}-{}", r.start(), r.end()) }
                    })
                    .collect();
                write!(f, "{prefix}[{}]{suffix}", parts.join(","))
            }
        }
    }
}

/// Parses a selector such as `n[0-5,7],n9`.
pub fn parse(input: &str) -> Result<Selector, SelectorError> {
    let err = |reason: &str| SelectorError { input: input.to_string(), reason: reason.to_string() };
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut start = 0usize;
    let bytes = input.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'[' => {
                depth += 1;
                if depth > 1 {
                    return Err(err("nested '['"));
                }
            }
            b']' => {
                if depth == 0 {
                    return Err(err("']' without '['"));
                }
                depth -= 1;
            }
            b',' if depth == 0 => {
                terms.push(parse_term(&input[start..i]).map_err(|r| err(&r))?);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(err("'[' without ']'"));
    }
    terms.push(parse_term(&input[start..]).map_err(|r| err(&r))?);
    Ok(Selector { terms })
}

fn parse_term(t: &str) -> Result<Term, String> {
    let t = t.trim();
    if t.is_empty() {
        return Err("empty term".into());
    }
    if t.chars().any(|c| c.is_whitespace()) {
        return Err(format!("space inside term {t:?}"));
    }
    let Some(open) = t.find('[') else {
        return Ok(Term::Exact(t.to_string()));
    };
    let close = t.find(']').ok_or("'[' without ']'")?;
    let (prefix, inner, suffix) = (&t[..open], &t[open + 1..close], &t[close + 1..]);
    if suffix.contains('[') {
        return Err(format!("more than one range in term {t:?}"));
    }
    let mut ranges = Vec::new();
    for item in inner.split(',') {
        let num = |s: &str| -> Result<u64, String> {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{s:?} is not a number"));
            }
            s.parse::<u64>().map_err(|_| format!("{s:?} is too large"))
        };
        let r = match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("range {a}-{b} runs backwards"));
                }
                a..=b
            }
            None => {
                let a = num(item)?;
                a..=a
            }
        };
        ranges.push(r);
    }
    Ok(Term::Range { prefix: prefix.to_string(), ranges, suffix: suffix.to_string() })
}

/// The names as one selector that selects exactly them, the way `-i` takes it: `n[0-2,4-99]`
/// for n0, n1, n2, n4 … n99 (names that end in a number without a leading zero share a range
/// with the names of the same prefix), other names listed as they are, in order of first
/// appearance of their prefix. Empty for no names.
pub fn compress<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut numbered: std::collections::HashMap<String, Vec<u64>> = std::collections::HashMap::new();
    for name in names {
        let digits = name.bytes().rev().take_while(|b| b.is_ascii_digit()).count();
        let (prefix, num) = name.split_at(name.len() - digits);
        let plain = num.is_empty() || (num.len() > 1 && num.starts_with('0')) || prefix.contains(['[', ']', ',']);
        match num.parse::<u64>() {
            Ok(n) if !plain => {
                let key = format!("[{prefix}");
                if !numbered.contains_key(&key) {
                    order.push(key.clone());
                }
                numbered.entry(key).or_default().push(n);
            }
            _ => order.push(name.to_string()),
        }
    }
    let mut terms = Vec::new();
    for key in order {
        let Some(prefix) = key.strip_prefix('[') else {
            terms.push(key);
            continue;
        };
        let mut nums = numbered.remove(&key).unwrap_or_default();
        nums.sort_unstable();
        nums.dedup();
        if let [one] = nums[..] {
            terms.push(format!("{prefix}{one}"));
            continue;
        }
        let mut ranges: Vec<RangeInclusive<u64>> = Vec::new();
        for n in nums {
            match ranges.last_mut() {
                Some(r) if *r.end() + 1 == n => *r = *r.start()..=n,
                _ => ranges.push(n..=n),
            }
        }
        terms.push(Term::Range { prefix: prefix.to_string(), ranges, suffix: String::new() }.to_string());
    }
    terms.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(sel: &str, universe: &[&str]) -> Vec<String> {
        let s = parse(sel).unwrap();
        universe.iter().filter(|n| s.terms.iter().any(|t| t.matches(n, "", &[]))).map(|n| n.to_string()).collect()
    }

    #[test]
    fn ranges_and_lists() {
        let u = ["n0", "n1", "n2", "n3", "n5", "n6", "n7", "n9", "n10", "n03", "head"];
        assert_eq!(names("n[0-5,7]", &u), ["n0", "n1", "n2", "n3", "n5", "n7"]);
        assert_eq!(names("n3,n9", &u), ["n3", "n9"]);
        assert_eq!(names("n[9-10],head", &u), ["n9", "n10", "head"]);
        assert_eq!(parse("n[0-5,7]").unwrap().terms[0].to_string(), "n[0-5,7]");
    }

    #[test]
    fn exact_matches_uid_and_mac() {
        let s = parse("52:54:00:00:00:01").unwrap();
        assert!(s.terms[0].matches("n1", "abc", &["52:54:00:00:00:01".into()]));
        assert!(parse("abc").unwrap().terms[0].matches("n1", "abc", &[]));
    }

    #[test]
    fn bad_syntax() {
        for bad in
            ["", "n[", "n]", "n[1-]", "n[5-1]", "n[a]", "n[[1]]", "n3,,n4", "n[1][2]", "n[99999999999999999999999]"]
        {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn names_compress_into_the_selector_that_selects_them() {
        assert_eq!(compress(["n0", "n1", "n2", "n4", "n5", "n6"]), "n[0-2,4-6]");
        assert_eq!(compress(["n7"]), "n7");
        assert_eq!(compress(["n3", "head", "n1", "n2", "n03", "rack1-n5", "rack1-n6"]), "n[1-3],head,n03,rack1-n[5-6]");
        assert_eq!(compress(["n1", "n1"]), "n1");
        assert_eq!(compress(Vec::<&str>::new()), "");
        // What comes out selects exactly what went in.
        let u: Vec<String> = (0..300).filter(|i| i % 7 != 3).map(|i| format!("n{i}")).collect();
        let c = compress(u.iter().map(String::as_str));
        assert_eq!(names(&c, &u.iter().map(String::as_str).collect::<Vec<_>>()), u);
    }
}
