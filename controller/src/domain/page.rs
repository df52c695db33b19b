//! Keyset pagination shared by every list operation. Cursors are opaque to
//! clients: the API hands out `next_cursor` and takes it back unchanged.

/// The largest page a client may ask for.
pub const MAX_PAGE_SIZE: u32 = 500;
/// The page size when a client does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 50;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Items per page, 1..=[`MAX_PAGE_SIZE`].
    pub limit: u32,
    /// Return items strictly after this cursor (from a previous page).
    pub after: Option<String>,
}

impl PageRequest {
    /// Builds a page request, clamping the limit into the allowed range.
    pub fn new(limit: Option<u32>, after: Option<String>) -> Self {
        Self {
            limit: limit.unwrap_or(DEFAULT_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE),
            after: after.filter(|cursor| !cursor.is_empty()),
        }
    }

    pub fn first(limit: u32) -> Self {
        Self::new(Some(limit), None)
    }
}

impl Default for PageRequest {
    fn default() -> Self {
        Self::new(None, None)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Present when more items may follow; pass it back as `after`.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` fetched rows: the extra row only
    /// tells that another page exists, and the cursor is the last kept item's.
    pub fn from_overfetched(
        mut rows: Vec<T>,
        limit: u32,
        cursor_of: impl Fn(&T) -> String,
    ) -> Self {
        let limit = limit as usize;
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = if has_more {
            rows.last().map(cursor_of)
        } else {
            None
        };
        Self {
            items: rows,
            next_cursor,
        }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_clamped() {
        assert_eq!(PageRequest::new(Some(0), None).limit, 1);
        assert_eq!(PageRequest::new(Some(10_000), None).limit, MAX_PAGE_SIZE);
        assert_eq!(PageRequest::new(None, None).limit, DEFAULT_PAGE_SIZE);
        assert_eq!(PageRequest::new(None, Some(String::new())).after, None);
    }

    #[test]
    fn overfetched_rows_make_a_cursor() {
        let page = Page::from_overfetched(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!(page.items, vec![1, 2]);
        assert_eq!(page.next_cursor.as_deref(), Some("2"));
        let last = Page::from_overfetched(vec![1, 2], 2, |n| n.to_string());
        assert_eq!(last.next_cursor, None);
    }
}
