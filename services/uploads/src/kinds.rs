//! What may be uploaded: purposes, their content types and sizes, and how a stored file's first
//! bytes are checked against the type it was declared as.

/// An upload purpose and its rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purpose {
    /// `avatar`, `replay`, `screenshot`, `ugc`.
    pub name: &'static str,
    /// Content types accepted, lower case.
    pub content_types: &'static [&'static str],
    /// Largest file accepted.
    pub max_bytes: u64,
}

const MIB: u64 = 1024 * 1024;

/// Every purpose.
pub const PURPOSES: &[Purpose] = &[
    Purpose { name: "avatar", content_types: &["image/png", "image/jpeg", "image/webp"], max_bytes: 2 * MIB },
    Purpose { name: "screenshot", content_types: &["image/png", "image/jpeg", "image/webp"], max_bytes: 10 * MIB },
    Purpose { name: "replay", content_types: &["application/octet-stream", "application/gzip"], max_bytes: 64 * MIB },
    Purpose {
        name: "ugc",
        content_types: &["application/json", "application/zip", "application/octet-stream", "image/png", "image/jpeg"],
        max_bytes: 32 * MIB,
    },
];

/// The largest file any purpose accepts.
pub const MAX_BYTES: u64 = 64 * MIB;

/// How many leading bytes the check reads.
pub const SNIFF_BYTES: usize = 512;

/// The purpose called `name`.
pub fn purpose(name: &str) -> Option<&'static Purpose> {
    PURPOSES.iter().find(|p| p.name == name)
}

/// True when `head`, a file's first bytes (up to `SNIFF_BYTES`), looks like `content_type`.
/// `application/octet-stream` is anything.
pub fn sniff_matches(content_type: &str, head: &[u8]) -> bool {
    match content_type {
        "image/png" => head.starts_with(b"\x89PNG\r\n\x1a\n"),
        "image/jpeg" => head.starts_with(&[0xFF, 0xD8, 0xFF]),
        "image/webp" => head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP",
        "application/gzip" => head.starts_with(&[0x1F, 0x8B]),
        // A local file header, or the end record of an empty archive.
        "application/zip" => head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06"),
        "application/json" => looks_like_json(head),
        "application/octet-stream" => true,
        _ => false,
    }
}

/// UTF-8 text (the last character may be cut by the sniff window) starting with `{` or `[`.
fn looks_like_json(head: &[u8]) -> bool {
    let text = match std::str::from_utf8(head) {
        Ok(text) => text,
        // Cut inside a multi-byte character at the end of the window: what came before is fine.
        Err(err) if err.error_len().is_none() && head.len() >= SNIFF_BYTES => match std::str::from_utf8(&head[..err.valid_up_to()]) {
            Ok(text) => text,
            Err(_) => return false,
        },
        Err(_) => return false,
    };
    let text = text.trim_start_matches('\u{feff}').trim_start();
    text.starts_with('{') || text.starts_with('[')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_told_apart_by_their_magic_bytes() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        let jpeg = [0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F'];
        let webp = b"RIFF\x24\0\0\0WEBPVP8 ";
        assert!(sniff_matches("image/png", png));
        assert!(!sniff_matches("image/png", &jpeg));
        assert!(sniff_matches("image/jpeg", &jpeg));
        assert!(!sniff_matches("image/jpeg", png));
        assert!(sniff_matches("image/webp", webp));
        assert!(!sniff_matches("image/webp", b"RIFF\x24\0\0\0WAVEfmt "));
        assert!(!sniff_matches("image/png", b""));
        assert!(!sniff_matches("image/png", b"<html><script>"));
    }

    #[test]
    fn archives_json_and_raw_bytes() {
        assert!(sniff_matches("application/gzip", &[0x1F, 0x8B, 8, 0]));
        assert!(sniff_matches("application/zip", b"PK\x03\x04\x14\0"));
        assert!(!sniff_matches("application/zip", b"MZ\x90\0"));
        assert!(sniff_matches("application/json", b"  {\"level\": 3}"));
        assert!(sniff_matches("application/json", "\u{feff}[1,2]".as_bytes()));
        assert!(!sniff_matches("application/json", b"\x89PNG"));
        assert!(!sniff_matches("application/json", b"hello"));
        assert!(sniff_matches("application/octet-stream", b"\0\x01anything"));
        assert!(!sniff_matches("text/html", b"<html>"));
    }

    #[test]
    fn json_cut_inside_a_character_at_the_window_edge_still_matches() {
        let mut head = b"{\"name\": \"".to_vec();
        while head.len() < SNIFF_BYTES - 1 {
            head.push(b'a');
        }
        head.extend_from_slice(&"é".as_bytes()[..1]);
        assert_eq!(head.len(), SNIFF_BYTES);
        assert!(sniff_matches("application/json", &head));
        assert!(!sniff_matches("application/json", &head[..100].iter().copied().chain([0xFF]).collect::<Vec<_>>()));
    }

    #[test]
    fn purposes_have_types_and_bounded_sizes() {
        for p in PURPOSES {
            assert!(!p.content_types.is_empty() && p.max_bytes <= MAX_BYTES, "{}", p.name);
        }
        assert_eq!(purpose("avatar").map(|p| p.max_bytes), Some(2 * MIB));
        assert!(purpose("executable").is_none());
    }
}
