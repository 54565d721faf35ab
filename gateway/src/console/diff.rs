//! A word-level diff of two notice texts (longest common subsequence), for the purpose page.

/// One run of a diff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chunk {
    Same(String),
    Removed(String),
    Added(String),
}

/// Splits into words, keeping each word's following whitespace so the text reads back whole.
fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            out.push(&text[start..i]);
            start = i;
            in_space = false;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// Returns the chunks turning `old` into `new`, adjacent words of one kind merged. Texts past
/// 2,000 words each are shown as one removal and one addition (the table would be too large).
pub fn diff(old: &str, new: &str) -> Vec<Chunk> {
    let (a, b) = (words(old), words(new));
    if a.len() > 2000 || b.len() > 2000 {
        return [Chunk::Removed(old.to_string()), Chunk::Added(new.to_string())]
            .into_iter()
            .filter(|c| !matches!(c, Chunk::Removed(s) | Chunk::Added(s) if s.is_empty()))
            .collect();
    }
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i].trim_end() == b[j].trim_end() {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out: Vec<Chunk> = Vec::new();
    let mut push = |chunk: Chunk| match (out.last_mut(), chunk) {
        (Some(Chunk::Same(s)), Chunk::Same(w))
        | (Some(Chunk::Removed(s)), Chunk::Removed(w))
        | (Some(Chunk::Added(s)), Chunk::Added(w)) => s.push_str(&w),
        (_, chunk) => out.push(chunk),
    };
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i].trim_end() == b[j].trim_end() {
            push(Chunk::Same(b[j].to_string()));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] > lcs[i + 1][j]) {
            push(Chunk::Added(b[j].to_string()));
            j += 1;
        } else {
            push(Chunk::Removed(a[i].to_string()));
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_diff_marks_changed_words_only() {
        let d = diff("Send me the monthly newsletter.", "Send me the weekly newsletter and offers.");
        let kept = diff("I agree to calls. Withdraw any time.", "I agree to calls and texts. Withdraw any time.");
        assert_eq!(
            kept,
            vec![
                Chunk::Same("I agree to ".into()),
                Chunk::Removed("calls. ".into()),
                Chunk::Added("calls and texts. ".into()),
                Chunk::Same("Withdraw any time.".into()),
            ]
        );
        assert_eq!(
            d,
            vec![
                Chunk::Same("Send me the ".into()),
                Chunk::Removed("monthly newsletter.".into()),
                Chunk::Added("weekly newsletter and offers.".into()),
            ]
        );
    }

    #[test]
    fn test_diff_of_equal_and_empty_texts() {
        assert_eq!(diff("a b", "a b"), vec![Chunk::Same("a b".into())]);
        assert_eq!(diff("", "new text"), vec![Chunk::Added("new text".into())]);
        assert_eq!(diff("old", ""), vec![Chunk::Removed("old".into())]);
    }
}
