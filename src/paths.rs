//! The one normalisation of URLs into CloudFront invalidation paths, and the choice of the paths sent for them.
//!
//! CloudFront's rules for an invalidation path: it begins with '/', is at most 4,000 characters, is case sensitive,
//! has its non-ASCII and RFC 1738 "unsafe" characters URL-encoded and nothing else encoded (an encoded safe character
//! no longer matches the cached object), and a '*' is a wildcard only as its last character. Raw unsafe characters
//! such as '~' or '[' make CreateInvalidation fail with InvalidArgument.
//!
//! Choices made here:
//! - Every character is encoded exactly once: an existing `%XX` escape is kept as it is, with the case of its hex
//!   digits as received (the object is cached under the URI as the viewer sent it; browsers and `encodeURIComponent`
//!   send upper case, which is also what this module writes), and a lone '%' becomes `%25`. So `/a b` and `/a%20b`
//!   are the same path.
//! - A '*' in a URL is always encoded (`%2A`): a URL coming from a request can never become a wildcard. Wildcards
//!   exist only where the application asks for one ([`wildcard`]) or where the sender builds one.
//! - Dot segments and repeated slashes are kept: CloudFront caches the URI as the viewer sent it, so rewriting
//!   `/a/../b` or `//a` would name another object. Browsers resolve dot segments before they send a request.
//! - Leading and trailing spaces and control characters are trimmed, as URL parsers do; inside a URL they are encoded.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// The longest invalidation path CloudFront accepts, in characters.
pub const MAX_PATH_LEN: usize = 4000;

/// How query strings of tracked URLs are treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum QueryStrings {
    /// The query string is part of the cache key: `/a.jpg?w=200` is tracked and sent as it is.
    #[default]
    Keep,
    /// The query string is not part of the cache key: `/a.jpg?w=200` is tracked and sent as `/a.jpg`.
    Strip,
    /// Every query variant of a path is invalidated: `/a.jpg?w=200` is tracked as `/a.jpg` and sent as
    /// `/a.jpg` plus `/a.jpg?*` (one exact path and one wildcard that covers exactly the query variants).
    Wildcard,
}

impl QueryStrings {
    /// The option value that names this mode: `"keep"`, `"strip"` or `"wildcard"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Keep => "keep",
            Self::Strip => "strip",
            Self::Wildcard => "wildcard",
        }
    }
}

impl fmt::Display for QueryStrings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QueryStrings {
    type Err = String;

    /// Parses `"keep"`, `"strip"` or `"wildcard"` (ASCII case ignored, surrounding spaces trimmed).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value = s.trim();
        [Self::Keep, Self::Strip, Self::Wildcard]
            .into_iter()
            .find(|mode| mode.as_str().eq_ignore_ascii_case(value))
            .ok_or_else(|| format!("invalid queryStrings value {s:?}: expected \"keep\", \"strip\" or \"wildcard\""))
    }
}

/// The rules that turn URLs into invalidation paths.
#[derive(Clone, Debug, Default)]
pub struct PathRules {
    /// How query strings are treated.
    pub query_strings: QueryStrings,
    /// The document a directory URL serves (e.g. `index.html`): when set, a directory path is sent in all its forms
    /// (`/docs`, `/docs/`, `/docs/index.html`).
    pub index_document: Option<String>,
}

/// Why a URL cannot be turned into an invalidation path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The URL is empty (or only spaces).
    #[error("the URL is empty")]
    Empty,
    /// The encoded path is longer than CloudFront accepts.
    #[error("the path is {len} characters long once encoded; CloudFront accepts at most {max}", max = MAX_PATH_LEN)]
    TooLong {
        /// Length of the encoded path.
        len: usize,
    },
    /// The URL cannot name an object of the distribution (shown as `invalid URL: …` by [`crate::error::Error`]).
    #[error("{0}")]
    Invalid(String),
}

/// Bytes copied as they are: the printable ASCII characters that RFC 1738 does not call unsafe. '%' (checked for an
/// escape) and '*' (never a wildcard in a URL) are left out.
static KEEP: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = b'!';
    while b < 0x7F {
        table[b as usize] = true;
        b += 1;
    }
    let special = b"\"#%*<>[\\]^`{|}~";
    let mut i = 0;
    while i < special.len() {
        table[special[i] as usize] = false;
        i += 1;
    }
    table
};

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// True when `bytes[i]` starts a valid `%XX` escape.
#[inline]
fn is_escape(bytes: &[u8], i: usize) -> bool {
    bytes.len() > i + 2 && bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit()
}

/// Leading and trailing characters URL parsers drop: C0 controls and space.
#[inline]
fn is_trimmed(c: char) -> bool {
    c <= ' '
}

/// Appends `part` to `out`, percent-encoding non-ASCII bytes, RFC 1738 unsafe characters, '*' and lone '%'.
fn encode_into(part: &str, out: &mut String) {
    let bytes = part.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if KEEP[usize::from(b)] {
            i += 1;
        } else if b == b'%' && is_escape(bytes, i) {
            i += 3;
        } else {
            // The run before `i` is ASCII, so both ends are char boundaries.
            if start < i {
                out.push_str(&part[start..i]);
            }
            out.push('%');
            out.push(char::from(HEX_UPPER[usize::from(b >> 4)]));
            out.push(char::from(HEX_UPPER[usize::from(b & 0x0F)]));
            i += 1;
            start = i;
        }
    }
    if start < bytes.len() {
        out.push_str(&part[start..]);
    }
}

/// Removes `scheme://authority` from an absolute http(s) URL; other inputs are returned as they are.
fn strip_origin(url: &str) -> Result<&str, PathError> {
    if url.starts_with('/') {
        return Ok(url);
    }
    let bytes = url.as_bytes();
    let scheme_len = bytes
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.'))
        .unwrap_or(bytes.len());
    if scheme_len == 0 || !bytes[0].is_ascii_alphabetic() || !url[scheme_len..].starts_with("://") {
        return Ok(url);
    }
    let scheme = &url[..scheme_len];
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(PathError::Invalid(format!(
            "unsupported scheme {scheme:?}: expected a path or an http(s) URL"
        )));
    }
    let rest = &url[scheme_len + 3..];
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if host_end == 0 {
        return Err(PathError::Invalid(format!("{url:?} has no host")));
    }
    Ok(&rest[host_end..])
}

/// Splits a trimmed URL into its raw path and raw query (the part after the first '?'), without origin or fragment.
fn split_url(url: &str) -> Result<(&str, Option<&str>), PathError> {
    let rest = strip_origin(url)?;
    let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
    Ok(match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    })
}

/// Appends the encoded path to `out`, with the leading '/' added when it is missing.
fn push_path(out: &mut String, path: &str) {
    if !path.starts_with('/') {
        out.push('/');
    }
    encode_into(path, out);
}

fn check_len(path: String) -> Result<String, PathError> {
    if path.len() > MAX_PATH_LEN {
        Err(PathError::TooLong { len: path.len() })
    } else {
        Ok(path)
    }
}

/// The part of `url` to keep when it is already a normalised path: one scan, no allocation. `None` when something
/// must change.
#[inline]
fn already_normal(url: &str, keep_query: bool) -> Option<&str> {
    let bytes = url.as_bytes();
    if bytes.first() != Some(&b'/') {
        return None;
    }
    let mut query_at = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if KEEP[usize::from(b)] {
            if b == b'?' && query_at.is_none() {
                query_at = Some(i);
                if !keep_query {
                    break;
                }
            }
            i += 1;
        } else if b == b'%' && is_escape(bytes, i) {
            i += 3;
        } else {
            return None;
        }
    }
    match query_at {
        // Dropped query, or an empty one.
        Some(q) if !keep_query || q + 1 == bytes.len() => Some(&url[..q]),
        _ => Some(url),
    }
}

/// Normalises a URL as served (a path, a path with query, or an absolute http(s) URL) into the path to track.
///
/// The origin of an absolute URL and any fragment are dropped and a leading '/' is added; non-ASCII characters,
/// RFC 1738 unsafe characters, '*' and lone '%' are percent-encoded once (existing escapes are kept); the query string
/// is kept ([`QueryStrings::Keep`], an empty one is dropped) or dropped (`Strip`, `Wildcard`). The result is never a
/// wildcard.
///
/// # Errors
/// [`PathError::Empty`] for an empty URL, [`PathError::TooLong`] when the path exceeds [`MAX_PATH_LEN`],
/// [`PathError::Invalid`] for an absolute URL of another scheme or without a host.
pub fn normalize(url: &str, rules: &PathRules) -> Result<String, PathError> {
    normalize_cow(url, rules).map(Cow::into_owned)
}

/// As [`normalize`], borrowing from `url` when it is already a clean path (no allocation).
///
/// # Errors
/// As [`normalize`].
pub fn normalize_cow<'a>(url: &'a str, rules: &PathRules) -> Result<Cow<'a, str>, PathError> {
    let keep_query = rules.query_strings == QueryStrings::Keep;
    match already_normal(url, keep_query) {
        Some(path) if path.len() > MAX_PATH_LEN => Err(PathError::TooLong { len: path.len() }),
        Some(path) => Ok(Cow::Borrowed(path)),
        None => rewrite(url, keep_query).map(Cow::Owned),
    }
}

/// As [`normalize`], taking the URL by value: a URL that is already a clean path is returned as it is, without a copy
/// (the hot path of tracking).
///
/// # Errors
/// As [`normalize`].
pub fn normalize_owned(mut url: String, rules: &PathRules) -> Result<String, PathError> {
    // A borrowed result is always a prefix of `url` (the query may be cut off).
    let len = match normalize_cow(&url, rules)? {
        Cow::Borrowed(path) => path.len(),
        Cow::Owned(path) => return Ok(path),
    };
    url.truncate(len);
    Ok(url)
}

/// The slow half of [`normalize`], for a URL that is not already a clean path: trims, drops origin and fragment,
/// encodes.
fn rewrite(url: &str, keep_query: bool) -> Result<String, PathError> {
    let url = url.trim_matches(is_trimmed);
    if url.is_empty() {
        return Err(PathError::Empty);
    }
    let (path, query) = split_url(url)?;
    let mut out = String::with_capacity(url.len() + 16);
    push_path(&mut out, path);
    if let Some(query) = query.filter(|q| keep_query && !q.is_empty()) {
        out.push('?');
        encode_into(query, &mut out);
    }
    check_len(out)
}

/// Normalises an explicit wildcard the application asked for: `prefix` is normalised like a URL (a trailing '*' in
/// it is the wildcard, any other '*' is encoded) and the result ends in '*'. A query in the prefix is kept as written
/// (`/a.jpg?*` covers the query variants of `/a.jpg`), except with [`QueryStrings::Strip`], where no cached object
/// has a query and such a prefix is refused.
///
/// # Errors
/// As [`normalize`]; [`PathError::Invalid`] for a prefix with a query when query strings are stripped.
pub fn wildcard(prefix: &str, rules: &PathRules) -> Result<String, PathError> {
    let prefix = prefix.trim_matches(is_trimmed);
    if prefix.is_empty() {
        return Err(PathError::Empty);
    }
    let base = prefix.strip_suffix('*').unwrap_or(prefix);
    let (path, query) = split_url(base)?;
    if query.is_some() && rules.query_strings == QueryStrings::Strip {
        return Err(PathError::Invalid(format!(
            "{prefix:?} has a query string, but query strings are stripped (queryStrings: \"strip\"), \
             so no cached object has one"
        )));
    }
    let mut out = String::with_capacity(base.len() + 16);
    push_path(&mut out, path);
    if let Some(query) = query {
        out.push('?');
        encode_into(query, &mut out);
    }
    out.push('*');
    check_len(out)
}

/// True when `path` (as produced by this module) is a wildcard path: its last character is a raw '*'. A '*' that
/// came from a URL is always encoded, so it is never one.
pub fn is_wildcard(path: &str) -> bool {
    path.ends_with('*')
}

/// The prefix of a wildcard path, without its '*'; `None` for an exact path.
fn wildcard_prefix(path: &str) -> Option<&str> {
    path.strip_suffix('*')
}

/// True when `path` is covered by `cover`: equal to it, or `cover` is a wildcard whose prefix `path` starts with.
pub fn covers(cover: &str, path: &str) -> bool {
    cover == path || wildcard_prefix(cover).is_some_and(|prefix| path.starts_with(prefix))
}

/// `/a.jpg?*`: every query variant of `path` and nothing else. For a path too long for that, a shorter prefix
/// wildcard (cut outside any escape) is the only form CloudFront accepts.
fn query_wildcard(path: &str) -> String {
    if path.len() + 2 <= MAX_PATH_LEN {
        return format!("{path}?*");
    }
    let bytes = path.as_bytes();
    let mut cut = MAX_PATH_LEN - 1;
    if bytes[cut - 1] == b'%' {
        cut -= 1;
    } else if bytes[cut - 2] == b'%' {
        cut -= 2;
    }
    format!("{}*", &path[..cut])
}

/// The forms of a directory path: `/docs/` or `/docs/index.html` give `/docs`, `/docs/`, `/docs/index.html`;
/// `/` or `/index.html` give `/`, `/index.html`. Other paths are returned alone.
fn directory_variants(path: &str, index_document: Option<&str>) -> Vec<String> {
    let index = index_document
        .map(|doc| doc.trim_start_matches('/'))
        .filter(|doc| !doc.is_empty());
    let Some(index) = index else {
        return vec![path.to_owned()];
    };
    let mut encoded = String::with_capacity(index.len());
    encode_into(index, &mut encoded);
    let dir = if path.ends_with('/') {
        Some(path)
    } else {
        path.strip_suffix(encoded.as_str())
            .filter(|dir| dir.ends_with('/'))
    };
    match dir {
        None => vec![path.to_owned()],
        Some("/") => vec!["/".to_owned(), format!("/{encoded}")],
        Some(dir) => vec![
            dir[..dir.len() - 1].to_owned(),
            dir.to_owned(),
            format!("{dir}{encoded}"),
        ],
    }
}

/// The paths to send for one tracked path, in a fixed order.
///
/// - A wildcard path is sent as it is.
/// - With an index document, a directory path (ending in '/', or ending in the index document) is sent in all its
///   forms: `/docs`, `/docs/`, `/docs/index.html`; `/` as `/` and `/index.html`. `/docs` alone could be a file and
///   is sent alone.
/// - [`QueryStrings::Keep`]: the query is kept on every form. `Strip`: the query is dropped. `Wildcard`: each form
///   `p` is sent as `p` and `p?*`, which covers its query variants and nothing else (`/` never becomes `/*`).
///
/// Forms longer than [`MAX_PATH_LEN`] are left out.
pub fn send_paths(tracked: &str, rules: &PathRules) -> Vec<String> {
    if is_wildcard(tracked) {
        return vec![tracked.to_owned()];
    }
    let (path, query) = match tracked.split_once('?') {
        Some((path, query)) => (path, Some(query).filter(|q| !q.is_empty())),
        None => (tracked, None),
    };
    let variants = directory_variants(path, rules.index_document.as_deref());
    let mut out: Vec<String> = Vec::with_capacity(variants.len() * 2);
    for variant in variants {
        if variant.len() > MAX_PATH_LEN {
            continue;
        }
        match (rules.query_strings, query) {
            (QueryStrings::Keep, Some(query)) => out.push(format!("{variant}?{query}")),
            (QueryStrings::Keep | QueryStrings::Strip, _) => out.push(variant),
            (QueryStrings::Wildcard, _) => {
                let all_queries = query_wildcard(&variant);
                out.push(variant);
                out.push(all_queries);
            }
        }
    }
    out.retain(|p| p.len() <= MAX_PATH_LEN);
    let mut seen = std::collections::HashSet::with_capacity(out.len());
    out.retain(|p| seen.insert(p.clone()));
    out
}

/// What covers `path` when the store overflows: its first directory (`/images/a.jpg` gives `/images/*`); for a
/// top-level path, every query variant of it (`/?cb=1` gives `/?*`), or the path itself. Never `/*`: the store falls
/// back to that only when it holds too many of these.
pub fn overflow_wildcard(path: &str) -> String {
    let (bare, query) = match path.split_once('?') {
        Some((before, _)) => (before, true),
        None => (path, false),
    };
    match bare.strip_prefix('/').and_then(|rest| rest.find('/')) {
        Some(i) => format!("{}*", &bare[..i + 2]),
        None if query => format!("{bare}?*"),
        None => bare.to_owned(),
    }
}

/// The most specific cover of `paths` within the budgets: at most `max_paths` paths, at most `max_wildcards` of them
/// wildcards (wildcard inputs count), every input covered by an output (see [`covers`]).
///
/// Inputs that already fit are returned sorted and deduplicated. Otherwise inputs covered by an input wildcard are
/// dropped, then whole directories are replaced by `dir/*`, along '/' boundaries of the path (never inside a query):
/// first the deepest directories that merge several wildcards, until the wildcards fit, then the fewest directories
/// of the deepest level that brings the path count within budget (the last one chosen as the smallest directory
/// that suffices). Exact paths are kept wherever the budgets allow. `/*` is the cover of last resort.
///
/// When the budgets cannot be met at all (`max_paths` or `max_wildcards` is 0 and the inputs do not fit), the
/// inputs are returned sorted, deduplicated and without those an input wildcard covers. Inputs that do not start
/// with '/' are kept as they are. Runs in O(n log n).
pub fn collapse(paths: &[String], max_paths: usize, max_wildcards: usize) -> Vec<String> {
    let mut sorted: Vec<&str> = paths.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    if fits(&sorted, max_paths, max_wildcards) {
        return sorted.into_iter().map(str::to_owned).collect();
    }
    let inputs = drop_covered(&sorted);
    if fits(&inputs, max_paths, max_wildcards) || max_paths == 0 || max_wildcards == 0 {
        return inputs.into_iter().map(str::to_owned).collect();
    }
    let mut tree = Tree::build(&inputs);
    tree.plan(max_paths, max_wildcards);
    tree.output(&inputs)
}

fn fits(paths: &[&str], max_paths: usize, max_wildcards: usize) -> bool {
    paths.len() <= max_paths && paths.iter().filter(|p| is_wildcard(p)).count() <= max_wildcards
}

/// The sorted inputs without those another input wildcard covers.
fn drop_covered<'a>(sorted: &[&'a str]) -> Vec<&'a str> {
    let mut prefixes: Vec<&str> = sorted.iter().filter_map(|p| wildcard_prefix(p)).collect();
    prefixes.sort_unstable();
    // Keep the prefixes no other prefix starts: in sorted order, one that starts with another comes after it, with
    // only strings that also start with it in between.
    let mut kept: Vec<&str> = Vec::with_capacity(prefixes.len());
    for prefix in prefixes {
        if kept.last().is_none_or(|last| !prefix.starts_with(last)) {
            kept.push(prefix);
        }
    }
    sorted
        .iter()
        .copied()
        .filter(|path| {
            // The only kept prefix `path` can start with is the greatest one not after it.
            let i = kept.partition_point(|prefix| prefix <= path);
            match i.checked_sub(1).map(|i| kept[i]) {
                Some(prefix) if path.starts_with(prefix) => {
                    path.len() == prefix.len() + 1 && is_wildcard(path)
                }
                _ => true,
            }
        })
        .collect()
}

const NO_PARENT: usize = usize::MAX;

/// One directory (`/`, `/a/`, `/a/b/` ...) of the inputs.
struct Dir<'a> {
    path: &'a str,
    parent: usize,
    depth: usize,
    /// Inputs directly in this directory, and how many of them are wildcards.
    own: usize,
    own_wild: usize,
    /// Outputs under this directory in the current plan, and how many of them are wildcards.
    out: usize,
    out_wild: usize,
    /// Replaced by `path*` in the current plan.
    collapsed: bool,
    /// Inside a collapsed ancestor.
    covered: bool,
}

struct Tree<'a> {
    dirs: Vec<Dir<'a>>,
    /// The directory of each input (`NO_PARENT` for inputs that do not start with '/').
    input_dir: Vec<usize>,
    /// Directory indices by depth.
    levels: Vec<Vec<usize>>,
    /// Outputs (and wildcards among them) outside the tree: inputs that do not start with '/'.
    stray: usize,
    stray_wild: usize,
}

/// The directory an input sits in: up to the last '/' of its path part.
fn dir_of(path: &str) -> Option<&str> {
    if !path.starts_with('/') {
        return None;
    }
    let bare = path.split_once('?').map_or(path, |(before, _)| before);
    bare.rfind('/').map(|i| &path[..=i])
}

/// `/a/b/` gives `/a/`.
fn parent_dir(dir: &str) -> &str {
    let inner = &dir[..dir.len() - 1];
    inner.rfind('/').map_or("/", |i| &dir[..=i])
}

impl<'a> Tree<'a> {
    fn build(inputs: &[&'a str]) -> Self {
        let mut dirs = vec![Dir::new("/", NO_PARENT, 0)];
        let mut index: HashMap<&'a str, usize> = HashMap::with_capacity(inputs.len() / 4 + 1);
        index.insert("/", 0);
        let mut input_dir = Vec::with_capacity(inputs.len());
        let (mut stray, mut stray_wild) = (0, 0);
        let mut missing: Vec<&'a str> = Vec::new();
        for &input in inputs {
            let wild = usize::from(is_wildcard(input));
            let Some(dir) = dir_of(input) else {
                stray += 1;
                stray_wild += wild;
                input_dir.push(NO_PARENT);
                continue;
            };
            let id = match index.get(dir) {
                Some(&id) => id,
                None => {
                    missing.clear();
                    let mut d = dir;
                    let mut parent = loop {
                        if let Some(&id) = index.get(d) {
                            break id;
                        }
                        missing.push(d);
                        d = parent_dir(d);
                    };
                    for &d in missing.iter().rev() {
                        let id = dirs.len();
                        dirs.push(Dir::new(d, parent, dirs[parent].depth + 1));
                        index.insert(d, id);
                        parent = id;
                    }
                    parent
                }
            };
            dirs[id].own += 1;
            dirs[id].own_wild += wild;
            input_dir.push(id);
        }
        let depth = dirs.iter().map(|d| d.depth).max().unwrap_or(0);
        let mut levels = vec![Vec::new(); depth + 1];
        for (id, dir) in dirs.iter().enumerate() {
            levels[dir.depth].push(id);
        }
        Tree {
            dirs,
            input_dir,
            levels,
            stray,
            stray_wild,
        }
    }

    /// Chooses the directories to collapse.
    fn plan(&mut self, max_paths: usize, max_wildcards: usize) {
        // Bottom-up count, merging wildcards in the deepest directories that hold several until they fit.
        let total_wild = self.stray_wild + self.dirs.iter().map(|d| d.own_wild).sum::<usize>();
        let mut excess = total_wild.saturating_sub(max_wildcards);
        for d in (0..self.levels.len()).rev() {
            let level = std::mem::take(&mut self.levels[d]);
            for &id in &level {
                let dir = &mut self.dirs[id];
                dir.out += dir.own;
                dir.out_wild += dir.own_wild;
            }
            if excess > 0 {
                self.merge_wildcards(&level, &mut excess);
            }
            for &id in &level {
                let (out, wild) = self.dirs[id].contribution();
                let parent = self.dirs[id].parent;
                if parent != NO_PARENT {
                    self.dirs[parent].out += out;
                    self.dirs[parent].out_wild += wild;
                }
            }
            self.levels[d] = level;
        }
        self.mark_covered();
        let total_out = self.stray + self.dirs[0].contribution().0;
        let total_wild = self.stray_wild + self.dirs[0].contribution().1;
        let Some(need) = total_out.checked_sub(max_paths).filter(|&n| n > 0) else {
            return;
        };
        let slots = max_wildcards.saturating_sub(total_wild);
        for depth in (0..self.levels.len()).rev() {
            if let Some(picks) = self.picks_at(depth, need, slots) {
                for id in picks {
                    self.dirs[id].collapsed = true;
                }
                self.mark_covered();
                return;
            }
        }
    }

    /// Collapses directories of one level that hold several wildcards until `excess` is 0 or none is left: the
    /// smallest merge that finishes the job, else the largest (fewest paths among equals).
    fn merge_wildcards(&mut self, level: &[usize], excess: &mut usize) {
        let mut merges: Vec<(usize, usize)> = level
            .iter()
            .filter(|&&id| self.dirs[id].out_wild >= 2)
            .map(|&id| (self.dirs[id].out_wild - 1, id))
            .collect();
        let dirs = &self.dirs;
        merges.sort_unstable_by(|&(sa, a), &(sb, b)| {
            sa.cmp(&sb)
                .then(dirs[b].out.cmp(&dirs[a].out))
                .then_with(|| dirs[b].path.cmp(dirs[a].path))
        });
        while *excess > 0 {
            let first = merges.partition_point(|&(saved, _)| saved < *excess);
            let pick = if first < merges.len() {
                // The end of the run of equal savings holds the one with the fewest paths.
                let saved = merges[first].0;
                let end = merges.partition_point(|&(s, _)| s <= saved);
                Some(merges.remove(end - 1))
            } else {
                merges.pop()
            };
            let Some((saved, id)) = pick else {
                break;
            };
            self.dirs[id].collapsed = true;
            *excess -= saved.min(*excess);
        }
    }

    fn mark_covered(&mut self) {
        for depth in 1..self.levels.len() {
            for &id in &self.levels[depth] {
                let parent = &self.dirs[self.dirs[id].parent];
                self.dirs[id].covered = parent.covered || parent.collapsed;
            }
        }
    }

    /// Whether collapsing this directory is possible, and what it saves: (paths saved, wildcards it adds, as i64).
    fn gain(&self, id: usize) -> Option<(usize, i64)> {
        let dir = &self.dirs[id];
        if dir.covered || dir.collapsed || dir.out < 2 {
            return None;
        }
        let wild = i64::try_from(dir.out_wild).unwrap_or(i64::MAX);
        Some((dir.out - 1, 1 - wild))
    }

    /// The fewest directories at `depth` whose collapse saves `need` paths within `slots` new wildcards, the last
    /// one replaced by the smallest directory at `depth` or deeper that suffices. `None` when this depth cannot.
    fn picks_at(&self, depth: usize, need: usize, slots: usize) -> Option<Vec<usize>> {
        let mut candidates: Vec<(usize, i64, usize)> = self.levels[depth]
            .iter()
            .filter_map(|&id| self.gain(id).map(|(saved, cost)| (saved, cost, id)))
            .collect();
        // Directories that add no wildcard first, then the others; largest savings first within each.
        candidates.sort_unstable_by(|a, b| {
            (a.1 > 0)
                .cmp(&(b.1 > 0))
                .then(b.0.cmp(&a.0))
                .then_with(|| self.dirs[a.2].path.cmp(self.dirs[b.2].path))
        });
        let mut picks = Vec::new();
        let mut left = need;
        let mut free = i64::try_from(slots).unwrap_or(i64::MAX);
        let (mut left_before, mut free_before) = (left, free);
        for (saved, cost, id) in candidates {
            if left == 0 {
                break;
            }
            if cost > free {
                continue;
            }
            (left_before, free_before) = (left, free);
            picks.push(id);
            left = left.saturating_sub(saved);
            free -= cost;
        }
        if left > 0 {
            return None;
        }
        let last = picks.pop()?;
        let best = self
            .best_fit(depth, &picks, left_before, free_before)
            .unwrap_or(last);
        picks.push(best);
        Some(picks)
    }

    /// The smallest directory at `depth` or deeper, outside `taken`, whose collapse saves `need` paths for at most
    /// `free` new wildcards; the deepest among equals.
    fn best_fit(&self, depth: usize, taken: &[usize], need: usize, free: i64) -> Option<usize> {
        let mut blocked = vec![false; self.dirs.len()];
        for &id in taken {
            blocked[id] = true;
        }
        let mut best: Option<(usize, std::cmp::Reverse<usize>, &str, usize)> = None;
        for level in &self.levels[depth..] {
            for &id in level {
                let parent = self.dirs[id].parent;
                if parent != NO_PARENT && self.dirs[id].depth > depth && blocked[parent] {
                    blocked[id] = true;
                }
                if blocked[id] {
                    continue;
                }
                let Some((saved, cost)) = self.gain(id) else {
                    continue;
                };
                if saved < need || cost > free {
                    continue;
                }
                let key = (
                    saved,
                    std::cmp::Reverse(self.dirs[id].depth),
                    self.dirs[id].path,
                    id,
                );
                if best.is_none_or(|b| key < b) {
                    best = Some(key);
                }
            }
        }
        best.map(|(_, _, _, id)| id)
    }

    fn output(&self, inputs: &[&str]) -> Vec<String> {
        let mut out: Vec<String> = inputs
            .iter()
            .zip(&self.input_dir)
            .filter(|&(_, &dir)| {
                dir == NO_PARENT || !(self.dirs[dir].collapsed || self.dirs[dir].covered)
            })
            .map(|(input, _)| (*input).to_owned())
            .collect();
        out.extend(
            self.dirs
                .iter()
                .filter(|d| d.collapsed && !d.covered)
                .map(|d| format!("{}*", d.path)),
        );
        out.sort_unstable();
        out.dedup();
        out
    }
}

impl<'a> Dir<'a> {
    fn new(path: &'a str, parent: usize, depth: usize) -> Self {
        Dir {
            path,
            parent,
            depth,
            own: 0,
            own_wild: 0,
            out: 0,
            out_wild: 0,
            collapsed: false,
            covered: false,
        }
    }

    /// What this directory adds to its parent's outputs: (paths, wildcards).
    fn contribution(&self) -> (usize, usize) {
        if self.collapsed {
            (1, 1)
        } else {
            (self.out, self.out_wild)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rules(query_strings: QueryStrings) -> PathRules {
        PathRules {
            query_strings,
            index_document: None,
        }
    }

    fn with_index(query_strings: QueryStrings) -> PathRules {
        PathRules {
            query_strings,
            index_document: Some("index.html".to_owned()),
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    /// A tracked path: starts with '/', no raw '*', every byte safe or part of a valid escape, within the limit.
    fn assert_clean(path: &str) {
        assert!(path.starts_with('/'), "{path:?} does not start with '/'");
        assert!(path.len() <= MAX_PATH_LEN, "{path:?} is too long");
        assert!(!is_wildcard(path), "{path:?} is a wildcard");
        let bytes = path.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            let escaped = (1..=2)
                .any(|back| i >= back && bytes[i - back] == b'%' && is_escape(bytes, i - back));
            assert!(
                KEEP[usize::from(b)] || escaped || (b == b'%' && is_escape(bytes, i)),
                "{path:?} has a raw {:?} at {i}",
                char::from(b)
            );
        }
    }

    #[test]
    fn normalize_table() {
        use QueryStrings::{Keep, Strip, Wildcard};
        let long_ok = format!("/{}", "a".repeat(MAX_PATH_LEN - 1));
        let long_raw = format!("/{}a", " ".repeat(1333));
        let cases: Vec<(&str, QueryStrings, Result<&str, PathError>)> = vec![
            // spaces and escapes: encoded exactly once
            ("/a b", Keep, Ok("/a%20b")),
            ("/a%20b", Keep, Ok("/a%20b")),
            ("/a\tb", Keep, Ok("/a%09b")),
            (" /a.jpg\n", Keep, Ok("/a.jpg")),
            // unicode
            ("/café", Keep, Ok("/caf%C3%A9")),
            ("/caf%C3%A9", Keep, Ok("/caf%C3%A9")),
            ("/日本", Keep, Ok("/%E6%97%A5%E6%9C%AC")),
            ("/caf%c3%a9", Keep, Ok("/caf%c3%a9")),
            // '%': valid escape kept (with its case), lone '%' encoded
            ("/100%", Keep, Ok("/100%25")),
            ("/a%zz", Keep, Ok("/a%25zz")),
            ("/a%2", Keep, Ok("/a%252")),
            ("/a%2a", Keep, Ok("/a%2a")),
            ("/a%2A", Keep, Ok("/a%2A")),
            // '*' is never a wildcard
            ("/a*b", Keep, Ok("/a%2Ab")),
            ("/a*", Keep, Ok("/a%2A")),
            ("/*", Keep, Ok("/%2A")),
            ("*", Keep, Ok("/%2A")),
            ("/a?x=*", Keep, Ok("/a?x=%2A")),
            // query strings
            ("/a?x=1", Keep, Ok("/a?x=1")),
            ("/a?x=1", Strip, Ok("/a")),
            ("/a?x=1", Wildcard, Ok("/a")),
            ("/a?x=1?y=/z", Keep, Ok("/a?x=1?y=/z")),
            ("/a?", Keep, Ok("/a")),
            ("/a?q=a b", Keep, Ok("/a?q=a%20b")),
            ("/a b?q=1", Strip, Ok("/a%20b")),
            ("?x=1", Keep, Ok("/?x=1")),
            // fragments
            ("/a#frag", Keep, Ok("/a")),
            ("/a?x=1#f?g", Keep, Ok("/a?x=1")),
            ("/a#f?x=1", Keep, Ok("/a")),
            ("#top", Keep, Ok("/")),
            // RFC 1738 unsafe characters
            ("/a<b>", Keep, Ok("/a%3Cb%3E")),
            ("/~user", Keep, Ok("/%7Euser")),
            ("/a\"b", Keep, Ok("/a%22b")),
            ("/{}|\\^`", Keep, Ok("/%7B%7D%7C%5C%5E%60")),
            ("/[x]", Keep, Ok("/%5Bx%5D")),
            ("/a\u{7f}", Keep, Ok("/a%7F")),
            // safe characters, case, dot segments and slashes kept
            ("/a+b;c=d@e:f,g!$'()-_.", Keep, Ok("/a+b;c=d@e:f,g!$'()-_.")),
            ("/Case/MiXed.JPG", Keep, Ok("/Case/MiXed.JPG")),
            ("//a//b", Keep, Ok("//a//b")),
            ("/a/../b/./c", Keep, Ok("/a/../b/./c")),
            ("images/a.jpg", Keep, Ok("/images/a.jpg")),
            // absolute URLs
            ("http://example.com/a?x=1#f", Keep, Ok("/a?x=1")),
            ("https://example.com:8443/p/q", Keep, Ok("/p/q")),
            ("https://example.com:8443/p/q?x=1", Strip, Ok("/p/q")),
            ("HTTPS://Example.COM", Keep, Ok("/")),
            ("http://user:pw@h:80?x", Keep, Ok("/?x")),
            ("http://h/a b/*", Keep, Ok("/a%20b/%2A")),
            ("ftp://h/a", Keep, Err(PathError::Invalid(String::new()))),
            ("http:///a", Keep, Err(PathError::Invalid(String::new()))),
            // empty and too long
            ("", Keep, Err(PathError::Empty)),
            ("  \n", Keep, Err(PathError::Empty)),
            (long_ok.as_str(), Keep, Ok(long_ok.as_str())),
            (&long_raw, Keep, Err(PathError::TooLong { len: 4001 })),
        ];
        for (input, mode, expected) in cases {
            let got = normalize(input, &rules(mode));
            match (&got, &expected) {
                (Err(PathError::Invalid(_)), Err(PathError::Invalid(_))) => {}
                _ => assert_eq!(
                    got.as_deref(),
                    expected.as_deref(),
                    "normalize({input:?}, {mode})"
                ),
            }
            if let Ok(path) = &got {
                assert_clean(path);
            }
        }
        let too_long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        assert_eq!(
            normalize(&too_long, &PathRules::default()),
            Err(PathError::TooLong { len: 4001 })
        );
        assert_eq!(
            normalize(&format!("{too_long}?x=1"), &rules(Keep)),
            Err(PathError::TooLong { len: 4005 })
        );
        assert_eq!(
            normalize(&format!("/{}?x=1", "a".repeat(3998)), &rules(Strip)).map(|p| p.len()),
            Ok(3999)
        );
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(PathError::Empty.to_string(), "the URL is empty");
        assert_eq!(
            PathError::TooLong { len: 4001 }.to_string(),
            "the path is 4001 characters long once encoded; CloudFront accepts at most 4000"
        );
        let invalid = normalize("ftp://h/a", &PathRules::default())
            .unwrap_err()
            .to_string();
        assert!(invalid.contains("\"ftp\""), "{invalid}");
    }

    #[test]
    fn query_strings_from_str() {
        assert_eq!("keep".parse(), Ok(QueryStrings::Keep));
        assert_eq!(" Strip ".parse(), Ok(QueryStrings::Strip));
        assert_eq!("WILDCARD".parse(), Ok(QueryStrings::Wildcard));
        let err = "all".parse::<QueryStrings>().unwrap_err();
        assert!(
            err.contains("\"all\"") && err.contains("\"wildcard\""),
            "{err}"
        );
        for mode in [
            QueryStrings::Keep,
            QueryStrings::Strip,
            QueryStrings::Wildcard,
        ] {
            assert_eq!(mode.to_string().parse(), Ok(mode));
        }
    }

    #[test]
    fn explicit_wildcards() {
        let keep = PathRules::default();
        let strip = rules(QueryStrings::Strip);
        let cases: Vec<(&str, &PathRules, Result<&str, PathError>)> = vec![
            ("/images/", &keep, Ok("/images/*")),
            ("/images/*", &keep, Ok("/images/*")),
            ("/images/a*b*", &keep, Ok("/images/a%2Ab*")),
            ("/a b*", &keep, Ok("/a%20b*")),
            ("*", &keep, Ok("/*")),
            ("/", &keep, Ok("/*")),
            ("https://h:1/x/*", &keep, Ok("/x/*")),
            ("/a.jpg?*", &keep, Ok("/a.jpg?*")),
            ("/a.jpg?v=1*", &keep, Ok("/a.jpg?v=1*")),
            ("/a.jpg?*", &strip, Err(PathError::Invalid(String::new()))),
            ("/a.jpg*", &strip, Ok("/a.jpg*")),
            ("", &keep, Err(PathError::Empty)),
        ];
        for (input, rules, expected) in cases {
            let got = wildcard(input, rules);
            match (&got, &expected) {
                (Err(PathError::Invalid(_)), Err(PathError::Invalid(_))) => {}
                _ => assert_eq!(got.as_deref(), expected.as_deref(), "wildcard({input:?})"),
            }
        }
        let fits = format!("/{}*", "a".repeat(MAX_PATH_LEN - 2));
        assert_eq!(wildcard(&fits, &keep).as_deref(), Ok(fits.as_str()));
        let over = format!("/{}*", "a".repeat(MAX_PATH_LEN - 1));
        assert_eq!(
            wildcard(&over, &keep),
            Err(PathError::TooLong { len: 4001 })
        );
    }

    #[test]
    fn wildcard_detection_and_cover() {
        assert!(is_wildcard("/a/*"));
        assert!(is_wildcard("/*"));
        assert!(!is_wildcard("/a%2A"));
        assert!(!is_wildcard("/a%2a"));
        assert!(covers("/a/*", "/a/b"));
        assert!(covers("/a/*", "/a/b*"));
        assert!(covers("/a/*", "/a/*"));
        assert!(!covers("/a/*", "/a"));
        assert!(covers("/a", "/a"));
        assert!(!covers("/a", "/a/b"));
        assert!(covers("/*", "/anything?x=1"));
        assert!(covers("/a.jpg?*", "/a.jpg?w=1"));
        assert!(!covers("/a.jpg?*", "/a.jpg"));
        assert!(!covers("/a.jpg?*", "/a.jpgx"));
    }

    #[test]
    fn send_paths_table() {
        use QueryStrings::{Keep, Strip, Wildcard};
        let long_dir = format!("/{}/", "a".repeat(3990));
        let long_file = format!("/{}%20%20", "a".repeat(3993));
        let cases: Vec<(&str, PathRules, Vec<String>)> = vec![
            ("/a?x=1", rules(Keep), strings(&["/a?x=1"])),
            ("/a?x=1", rules(Strip), strings(&["/a"])),
            ("/a.jpg", rules(Wildcard), strings(&["/a.jpg", "/a.jpg?*"])),
            (
                "/a.jpg?x=1",
                rules(Wildcard),
                strings(&["/a.jpg", "/a.jpg?*"]),
            ),
            ("/", rules(Wildcard), strings(&["/", "/?*"])),
            ("/images/*", rules(Wildcard), strings(&["/images/*"])),
            ("/images/*", with_index(Keep), strings(&["/images/*"])),
            ("/docs/", rules(Keep), strings(&["/docs/"])),
            (
                "/docs/",
                with_index(Keep),
                strings(&["/docs", "/docs/", "/docs/index.html"]),
            ),
            (
                "/docs/index.html",
                with_index(Keep),
                strings(&["/docs", "/docs/", "/docs/index.html"]),
            ),
            ("/docs", with_index(Keep), strings(&["/docs"])),
            (
                "/docs/myindex.html",
                with_index(Keep),
                strings(&["/docs/myindex.html"]),
            ),
            ("/", with_index(Keep), strings(&["/", "/index.html"])),
            (
                "/index.html",
                with_index(Keep),
                strings(&["/", "/index.html"]),
            ),
            (
                "/",
                with_index(Wildcard),
                strings(&["/", "/?*", "/index.html", "/index.html?*"]),
            ),
            (
                "/docs/?v=2",
                with_index(Keep),
                strings(&["/docs?v=2", "/docs/?v=2", "/docs/index.html?v=2"]),
            ),
            (
                "/docs/?v=2",
                with_index(Strip),
                strings(&["/docs", "/docs/", "/docs/index.html"]),
            ),
            (
                &long_dir,
                with_index(Keep),
                vec![long_dir[..long_dir.len() - 1].to_owned(), long_dir.clone()],
            ),
            (
                &long_file,
                rules(Wildcard),
                vec![
                    long_file.clone(),
                    format!("{}*", &long_file[..long_file.len() - 3]),
                ],
            ),
        ];
        for (tracked, rules, expected) in cases {
            let got = send_paths(tracked, &rules);
            assert_eq!(got, expected, "send_paths({tracked:?}, {rules:?})");
            assert!(got.iter().all(|path| path.len() <= MAX_PATH_LEN));
        }
        let index = PathRules {
            query_strings: Keep,
            index_document: Some("/home page.html".to_owned()),
        };
        assert_eq!(
            send_paths("/a/", &index),
            strings(&["/a", "/a/", "/a/home%20page.html"])
        );
        assert_eq!(
            send_paths("/a/home%20page.html", &index),
            strings(&["/a", "/a/", "/a/home%20page.html"])
        );
    }

    #[test]
    fn normalize_owned_agrees_with_normalize() {
        for rules in [
            PathRules::default(),
            PathRules {
                query_strings: QueryStrings::Strip,
                ..PathRules::default()
            },
        ] {
            for url in [
                "/a",
                "/a?x=1",
                "/a?",
                "/a b",
                "/caf\u{e9}",
                "http://h/x?y",
                "/a%20b",
                "",
            ] {
                assert_eq!(
                    normalize_owned(url.to_owned(), &rules),
                    normalize(url, &rules),
                    "{url}"
                );
            }
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        assert_eq!(
            normalize_owned(long.clone(), &PathRules::default()),
            normalize(&long, &PathRules::default())
        );
    }

    #[test]
    fn overflow_wildcards() {
        for (path, expected) in [
            ("/images/a.jpg", "/images/*"),
            ("/images/", "/images/*"),
            ("/a/b/c", "/a/*"),
            ("/a.jpg", "/a.jpg"),
            ("/", "/"),
            ("/?cb=123", "/?*"),
            ("/a.jpg?w=1", "/a.jpg?*"),
            ("/a?x=/b/c", "/a?*"),
            ("/images/x*", "/images/*"),
            ("/images*", "/images*"),
            ("//a", "//*"),
        ] {
            assert_eq!(overflow_wildcard(path), expected, "{path}");
            assert!(covers(&overflow_wildcard(path), path));
        }
    }

    fn wildcards(paths: &[String]) -> usize {
        paths.iter().filter(|p| is_wildcard(p)).count()
    }

    fn assert_cover(inputs: &[String], out: &[String], max_paths: usize, max_wildcards: usize) {
        assert!(
            out.len() <= max_paths,
            "{} paths > {max_paths}: {out:?}",
            out.len()
        );
        assert!(
            wildcards(out) <= max_wildcards,
            "too many wildcards: {out:?}"
        );
        let exact: std::collections::HashSet<&str> = out.iter().map(String::as_str).collect();
        let wild: Vec<&String> = out.iter().filter(|p| is_wildcard(p)).collect();
        for input in inputs {
            assert!(
                exact.contains(input.as_str()) || wild.iter().any(|w| covers(w, input)),
                "{input} not covered by {out:?}"
            );
        }
    }

    #[test]
    fn collapse_keeps_what_fits() {
        let input = strings(&["/b", "/a", "/b", "/a/*", "/a/x"]);
        assert_eq!(
            collapse(&input, 10, 1),
            strings(&["/a", "/a/*", "/a/x", "/b"])
        );
        assert_eq!(collapse(&input, 3, 1), strings(&["/a", "/a/*", "/b"]));
        assert_eq!(collapse(&[], 0, 0), Vec::<String>::new());
    }

    #[test]
    fn collapse_deepest_directory_first() {
        let mut input = strings(&["/css/a.css", "/css/b.css"]);
        input.extend((0..10).map(|i| format!("/img/{i}.jpg")));
        let out = collapse(&input, 5, 1);
        assert_eq!(out, strings(&["/css/a.css", "/css/b.css", "/img/*"]));

        let mut input: Vec<String> = (0..5)
            .flat_map(|i| [format!("/a/b/c/{i}"), format!("/a/b/d/{i}")])
            .collect();
        input.push("/a/x".to_owned());
        let out = collapse(&input, 8, 2);
        let mut expected: Vec<String> = (0..5).map(|i| format!("/a/b/d/{i}")).collect();
        expected.extend(strings(&["/a/b/c/*", "/a/x"]));
        expected.sort();
        assert_eq!(out, expected);
    }

    #[test]
    fn collapse_merges_wildcards_nearby() {
        let input = strings(&[
            "/img/a", "/img/a?*", "/img/b", "/img/b?*", "/css/c", "/css/c?*",
        ]);
        assert_eq!(
            collapse(&input, 100, 2),
            strings(&["/css/c", "/css/c?*", "/img/*"])
        );
        assert_eq!(collapse(&input, 100, 1), strings(&["/*"]));
        // The smallest merge that is enough.
        let mut input: Vec<String> = (0..10).map(|i| format!("/big/{i}?*")).collect();
        input.extend(strings(&["/small/a?*", "/small/b?*", "/top?*"]));
        let out = collapse(&input, 100, 12);
        assert!(
            out.contains(&"/small/*".to_owned()) && out.contains(&"/big/0?*".to_owned()),
            "{out:?}"
        );
    }

    #[test]
    fn collapse_uses_the_smallest_directory_that_suffices() {
        // 5 top directories of 4 directories of 10 files.
        let input: Vec<String> = (0..5)
            .flat_map(|p| {
                (0..4).flat_map(move |d| (0..10).map(move |f| format!("/p{p}/d{d}/{f}.jpg")))
            })
            .collect();
        let out = collapse(&input, 119, 5);
        assert_cover(&input, &out, 119, 5);
        let wild: Vec<&String> = out.iter().filter(|p| is_wildcard(p)).collect();
        assert_eq!(wild, ["/p0/*", "/p1/*", "/p2/d0/*"]);
        assert_eq!(out.len(), 200 - 39 - 39 - 9);
        // With enough wildcards, directories of the deepest level are enough.
        let out = collapse(&input, 150, 15);
        assert_cover(&input, &out, 150, 15);
        assert!(
            out.iter()
                .filter(|p| is_wildcard(p))
                .all(|w| w.len() == "/p0/d0/*".len()),
            "{out:?}"
        );
    }

    #[test]
    fn collapse_without_budget_returns_inputs() {
        let input = strings(&["/c", "/a", "/b/*", "/b/x"]);
        assert_eq!(collapse(&input, 2, 0), strings(&["/a", "/b/*", "/c"]));
        assert_eq!(collapse(&input, 0, 5), strings(&["/a", "/b/*", "/c"]));
    }

    #[test]
    fn collapse_a_million_paths() {
        let input: Vec<String> = (0..1_000_000)
            .map(|i| format!("/d{}/s{}/file-{i}.jpg", i % 1000, i % 7))
            .collect();
        let start = std::time::Instant::now();
        let out = collapse(&input, 3000, 15);
        let elapsed = start.elapsed();
        assert_cover(&input, &out, 3000, 15);
        // Generous for unoptimised builds.
        assert!(elapsed.as_secs() < 30, "{elapsed:?}");
    }

    fn url_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "(https?://[a-z0-9.:@]{0,12})?[/a-zA-Z0-9 %*?#~<>\"{}|\\\\^`\\[\\]éあ日.+_-]{0,40}",
            "[/%0-9a-fA-F*?]{0,20}",
        ]
    }

    fn mode_strategy() -> impl Strategy<Value = QueryStrings> {
        prop_oneof![
            Just(QueryStrings::Keep),
            Just(QueryStrings::Strip),
            Just(QueryStrings::Wildcard)
        ]
    }

    fn tree_paths() -> impl Strategy<Value = Vec<String>> {
        let segment = prop::sample::select(vec!["a", "b", "c", "d", "e f"]);
        let path = (prop::collection::vec(segment, 1..5), 0..5u8).prop_map(|(segments, kind)| {
            let base = format!("/{}", segments.join("/"));
            match kind {
                0 => base,
                1 => format!("{base}/"),
                2 => format!("{base}?*"),
                3 => format!("{base}*"),
                _ => format!("{base}?x=/a/b"),
            }
        });
        prop::collection::vec(path, 0..60)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn normalize_is_clean_and_idempotent(url in url_strategy(), mode in mode_strategy()) {
            let rules = rules(mode);
            if let Ok(path) = normalize(&url, &rules) {
                assert_clean(&path);
                prop_assert_eq!(normalize(&path, &rules), Ok(path.clone()));
                if mode != QueryStrings::Keep {
                    prop_assert!(!path.contains('?'));
                }
                // Encoding is done once: a raw space and its escape give the same path.
                if !path.ends_with("%20") {
                    prop_assert_eq!(normalize(&path.replace("%20", " "), &rules).ok(), Some(path));
                }
            }
        }

        #[test]
        fn wildcard_is_one_wildcard(prefix in url_strategy(), mode in mode_strategy()) {
            if let Ok(path) = wildcard(&prefix, &rules(mode)) {
                prop_assert!(is_wildcard(&path));
                prop_assert!(path.len() <= MAX_PATH_LEN);
                prop_assert_eq!(path.matches('*').count(), 1);
                prop_assert_eq!(wildcard(&path, &rules(mode)), Ok(path.clone()));
            }
        }

        #[test]
        fn send_paths_cover_without_widening(url in url_strategy(), mode in mode_strategy(), index in any::<bool>()) {
            let rules = PathRules {
                query_strings: mode,
                index_document: index.then(|| "index.html".to_owned()),
            };
            let Ok(tracked) = normalize(&url, &rules) else { return Ok(()) };
            let sent = send_paths(&tracked, &rules);
            prop_assert_eq!(&sent, &send_paths(&tracked, &rules));
            prop_assert!(!sent.is_empty());
            prop_assert!(sent.iter().any(|s| covers(s, &tracked)));
            for path in &sent {
                prop_assert!(path.starts_with('/') && path.len() <= MAX_PATH_LEN);
                prop_assert!(path.find('*').is_none_or(|i| i == path.len() - 1), "{}", path);
                if let Some(prefix) = wildcard_prefix(path) {
                    // Only query variants: the prefix is a sent path followed by '?'.
                    prop_assert!(prefix.ends_with('?') && sent.iter().any(|s| format!("{s}?") == prefix), "{}", path);
                }
            }
            if mode == QueryStrings::Wildcard && tracked.len() < 3000 {
                let variant = format!("{tracked}?utm=1");
                prop_assert!(sent.iter().any(|s| covers(s, &variant)));
            }
        }

        #[test]
        fn collapse_respects_budgets_and_covers(
            inputs in tree_paths(),
            max_paths in 1..30usize,
            max_wildcards in 1..6usize,
        ) {
            let out = collapse(&inputs, max_paths, max_wildcards);
            assert_cover(&inputs, &out, max_paths, max_wildcards);
            let mut sorted = inputs.clone();
            sorted.sort();
            sorted.dedup();
            if sorted.len() <= max_paths && wildcards(&sorted) <= max_wildcards {
                prop_assert_eq!(out, sorted);
            }
        }
    }
}
