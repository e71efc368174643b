//! Strided, optionally gathered matrix views: the operands of every GEMM.
//!
//! Element `(i, j)` of a view lives at `data[r(i) * row_stride + c(j) * col_stride]`, where
//! `r(i)` is `i`, or `row_index[i]` for a view whose rows are *gathered* through an index list,
//! and likewise `c(j)` for gathered columns. A transpose swaps the two descriptions, so a
//! transposed operand costs nothing, and a gathered one costs nothing beyond the packing the
//! GEMM does anyway.

use crate::error::{KernelError, Result};

/// A read-only matrix view. Constructors check every bound; a `MatRef` never reads outside
/// its slice.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) row_stride: usize,
    pub(crate) col_stride: usize,
    pub(crate) row_index: Option<&'a [u32]>,
    pub(crate) col_index: Option<&'a [u32]>,
}

/// A mutable matrix view, optionally *scattered*: row `i` of the view is row `row_index[i]` of
/// the underlying matrix. Constructors refuse views whose elements overlap (a stride of 0,
/// rows that interleave, repeated scatter indices), so parallel writers never collide.
#[derive(Debug)]
pub struct MatMut<'a> {
    pub(crate) data: &'a mut [f32],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) row_stride: usize,
    pub(crate) col_stride: usize,
    pub(crate) row_index: Option<&'a [u32]>,
}

/// Checks that a `rows × cols` strided matrix fits in `len` elements.
fn check_extent(op: &'static str, len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let last = (rows - 1).checked_mul(rs).and_then(|r| (cols - 1).checked_mul(cs).and_then(|c| r.checked_add(c)));
    match last {
        Some(last) if last < len => Ok(()),
        _ => Err(KernelError::View {
            op,
            detail: format!("{rows}x{cols} view with strides ({rs}, {cs}) reaches past a buffer of {len} elements"),
        }),
    }
}

/// The first claimant of each row, to find rows claimed twice: a table over the rows when there
/// are not many more rows than claims, a hash map otherwise (a view with no columns may have
/// `usize::MAX` rows; the table must not be sized by them).
pub(crate) enum RowOwners {
    Table(Vec<u32>),
    Map(std::collections::HashMap<usize, u32>),
}

impl RowOwners {
    /// Owners for rows `0..rows`, expecting about `claims` claims.
    pub(crate) fn new(rows: usize, claims: usize) -> RowOwners {
        if rows <= claims.saturating_mul(4).max(4096) {
            RowOwners::Table(vec![u32::MAX; rows])
        } else {
            RowOwners::Map(std::collections::HashMap::with_capacity(claims))
        }
    }

    /// Records `owner` for `row` (below the `rows` given to [`RowOwners::new`]); returns the
    /// earlier owner instead when the row was already claimed.
    pub(crate) fn claim(&mut self, row: usize, owner: u32) -> Option<u32> {
        match self {
            RowOwners::Table(table) => {
                let slot = &mut table[row];
                if *slot != u32::MAX {
                    return Some(*slot);
                }
                *slot = owner;
                None
            }
            RowOwners::Map(map) => match map.entry(row) {
                std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(owner);
                    None
                }
            },
        }
    }
}

/// Checks that a buffer of `len` elements holds exactly a row-major `rows × cols` matrix.
fn check_row_major(op: &'static str, len: usize, rows: usize, cols: usize) -> Result<()> {
    match rows.checked_mul(cols) {
        Some(needed) if needed == len => Ok(()),
        Some(needed) => Err(KernelError::View {
            op,
            detail: format!("{rows}x{cols} needs {needed} elements, the buffer has {len}"),
        }),
        None => Err(KernelError::View {
            op,
            detail: format!("{rows}x{cols} has more elements than fit in usize; the buffer has {len}"),
        }),
    }
}

/// Checks every index is below `bound`.
fn check_index(op: &'static str, index: &[u32], bound: usize) -> Result<()> {
    match index.iter().position(|&i| i as usize >= bound) {
        None => Ok(()),
        Some(position) => {
            Err(KernelError::Index { op, index: index[position] as u64, position, bound, note: String::new() })
        }
    }
}

impl<'a> MatRef<'a> {
    /// A `rows × cols` view of `data` with the given strides (in elements).
    ///
    /// ```
    /// use elide_kernels::gemm::MatRef;
    /// let data = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    /// let a = MatRef::new(&data, 2, 3, 3, 1).unwrap(); // row-major 2x3
    /// assert_eq!(a.t().get(2, 1), 6.0);
    /// ```
    pub fn new(data: &'a [f32], rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> Result<Self> {
        check_extent("MatRef::new", data.len(), rows, cols, row_stride, col_stride)?;
        Ok(MatRef { data, rows, cols, row_stride, col_stride, row_index: None, col_index: None })
    }

    /// A contiguous row-major `rows × cols` view; `data.len()` must be `rows * cols`.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Result<Self> {
        check_row_major("MatRef::row_major", data.len(), rows, cols)?;
        Self::new(data, rows, cols, cols, 1)
    }

    /// The same view with rows picked through `index`: row `i` of the result is row `index[i]`.
    /// A view's rows can be gathered once.
    pub fn gather_rows(self, index: &'a [u32]) -> Result<Self> {
        if self.row_index.is_some() {
            return Err(KernelError::Argument {
                op: "MatRef::gather_rows",
                detail: "rows are already gathered; compose the index lists first".into(),
            });
        }
        check_index("MatRef::gather_rows", index, self.rows)?;
        Ok(MatRef { rows: index.len(), row_index: Some(index), ..self })
    }

    /// The same view with columns picked through `index`.
    pub fn gather_cols(self, index: &'a [u32]) -> Result<Self> {
        Ok(self.t().gather_rows(index)?.t())
    }

    /// The transpose, without copying.
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            row_index: self.col_index,
            col_index: self.row_index,
        }
    }

    /// Whether each row's elements are contiguous (column stride 1, columns not gathered; rows
    /// may be strided or gathered): as the left operand of a product, such a view is read where
    /// it lives instead of being packed.
    ///
    /// ```
    /// use elide_kernels::gemm::MatRef;
    /// let data = [0.0; 6];
    /// let a = MatRef::row_major(&data, 2, 3)?;
    /// assert!(a.rows_contiguous() && a.gather_rows(&[1, 0])?.rows_contiguous());
    /// assert!(!a.t().rows_contiguous() && !a.gather_cols(&[2, 0])?.rows_contiguous());
    /// # Ok::<(), elide_kernels::KernelError>(())
    /// ```
    pub fn rows_contiguous(&self) -> bool {
        self.col_stride == 1 && self.col_index.is_none()
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Offset in `data` of the start of row `i` (before the column stride is applied).
    #[inline(always)]
    pub(crate) fn row_offset(&self, i: usize) -> usize {
        match self.row_index {
            Some(index) => index[i] as usize * self.row_stride,
            None => i * self.row_stride,
        }
    }

    /// Offset of column `j` within a row.
    #[inline(always)]
    pub(crate) fn col_offset(&self, j: usize) -> usize {
        match self.col_index {
            Some(index) => index[j] as usize * self.col_stride,
            None => j * self.col_stride,
        }
    }

    /// Element `(i, j)`. Panics if out of range (a convenience for tests and references).
    pub fn get(&self, i: usize, j: usize) -> f32 {
        assert!(i < self.rows && j < self.cols, "MatRef::get({i}, {j}) on a {}x{} view", self.rows, self.cols);
        self.data[self.row_offset(i) + self.col_offset(j)]
    }
}

impl<'a> MatMut<'a> {
    /// A mutable `rows × cols` view of `data` with the given strides. Refuses views that reach
    /// past `data` or whose elements could overlap.
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> Result<Self> {
        const OP: &str = "MatMut::new";
        check_extent(OP, data.len(), rows, cols, row_stride, col_stride)?;
        // Sufficient condition for distinct (i, j) to hit distinct elements: order the two
        // dimensions by stride; the inner one must step by at least 1 and the outer one must
        // step over the whole inner extent.
        let (inner, outer) = if row_stride <= col_stride {
            ((rows, row_stride), (cols, col_stride))
        } else {
            ((cols, col_stride), (rows, row_stride))
        };
        let ok = match (inner.0 <= 1, outer.0 <= 1) {
            (true, true) => true,
            (true, false) => outer.1 >= 1,
            (false, true) => inner.1 >= 1,
            (false, false) => inner.1 >= 1 && outer.1 >= inner.1 * inner.0,
        };
        if !ok {
            return Err(KernelError::View {
                op: OP,
                detail: format!("{rows}x{cols} view with strides ({row_stride}, {col_stride}) overlaps itself"),
            });
        }
        Ok(MatMut { data, rows, cols, row_stride, col_stride, row_index: None })
    }

    /// A contiguous row-major `rows × cols` view; `data.len()` must be `rows * cols`.
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Result<Self> {
        check_row_major("MatMut::row_major", data.len(), rows, cols)?;
        Self::new(data, rows, cols, cols, 1)
    }

    /// The same view with its rows scattered through `index`: row `i` of the result writes row
    /// `index[i]`. Indices must be distinct (a repeated index would make two writers race).
    pub fn scatter_rows(self, index: &'a [u32]) -> Result<Self> {
        const OP: &str = "MatMut::scatter_rows";
        if self.row_index.is_some() {
            return Err(KernelError::Argument { op: OP, detail: "rows are already scattered".into() });
        }
        check_index(OP, index, self.rows)?;
        let mut first_seen = RowOwners::new(self.rows, index.len());
        for (position, &row) in index.iter().enumerate() {
            if let Some(first) = first_seen.claim(row as usize, position as u32) {
                return Err(KernelError::DuplicateIndex {
                    op: OP,
                    index: row,
                    first: first as usize,
                    second: position,
                });
            }
        }
        Ok(MatMut { rows: index.len(), row_index: Some(index), ..self })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Offset in `data` of the start of row `i`.
    #[inline(always)]
    pub(crate) fn row_offset(&self, i: usize) -> usize {
        match self.row_index {
            Some(index) => index[i] as usize * self.row_stride,
            None => i * self.row_stride,
        }
    }

    /// A read-only view of the same elements.
    pub fn as_ref(&self) -> MatRef<'_> {
        MatRef {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
            row_index: self.row_index,
            col_index: None,
        }
    }

    /// A shorter-lived mutable view of the same elements.
    pub fn rb_mut(&mut self) -> MatMut<'_> {
        MatMut {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
            row_index: self.row_index,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_refuse_bad_extents_overlap_and_indices() {
        let data = vec![0.0f32; 12];
        let err = MatRef::new(&data, 3, 5, 4, 1).unwrap_err();
        assert!(err.to_string().contains("3x5 view with strides (4, 1) reaches past a buffer of 12"), "{err}");
        let a = MatRef::row_major(&data, 3, 4).unwrap();
        let err = a.gather_rows(&[0, 3]).unwrap_err();
        assert!(err.to_string().contains("index 3 at position 1 is out of range for 3 rows"), "{err}");
        let mut out = vec![0.0f32; 12];
        let err = MatMut::new(&mut out, 3, 4, 2, 1).unwrap_err();
        assert!(err.to_string().contains("overlaps itself"), "{err}");
        let c = MatMut::row_major(&mut out, 3, 4).unwrap();
        let err = c.scatter_rows(&[2, 0, 2]).unwrap_err();
        assert!(err.to_string().contains("index 2 appears twice (positions 0 and 2)"), "{err}");
    }

    #[test]
    fn row_major_sizes_whose_product_overflows_are_errors() {
        let data = [0.0f32; 6];
        let err = MatRef::row_major(&data, usize::MAX, 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "MatRef::row_major: invalid view: {}x2 has more elements than fit in usize; the buffer has 6",
                usize::MAX
            )
        );
        let mut out = [0.0f32; 6];
        let err = MatMut::row_major(&mut out, 3, usize::MAX / 2).unwrap_err();
        assert!(err.to_string().contains("has more elements than fit in usize"), "{err}");
        let err = MatRef::row_major(&data, 2, 4).unwrap_err();
        assert_eq!(err.to_string(), "MatRef::row_major: invalid view: 2x4 needs 8 elements, the buffer has 6");
    }

    #[test]
    fn scattering_a_view_of_many_empty_rows_allocates_nothing_per_row() {
        // usize::MAX rows of no columns: a valid empty view. The duplicate check used to
        // allocate a table of usize::MAX entries (a capacity-overflow panic).
        let mut out: [f32; 0] = [];
        let c = MatMut::new(&mut out, usize::MAX, 0, 1, 1).unwrap();
        let err = c.scatter_rows(&[7, 3, 7]).unwrap_err();
        assert!(err.to_string().contains("index 7 appears twice (positions 0 and 2)"), "{err}");
        let c = MatMut::new(&mut out, usize::MAX, 0, 1, 1).unwrap();
        assert_eq!(c.scatter_rows(&[7, 3]).unwrap().rows(), 2);
    }

    #[test]
    fn transpose_and_gather_address_the_right_elements() {
        let data: Vec<f32> = (0..12).map(|x| x as f32).collect();
        let a = MatRef::row_major(&data, 3, 4).unwrap();
        assert_eq!(a.t().get(3, 2), 11.0);
        let idx = [2u32, 0];
        let g = a.gather_rows(&idx).unwrap();
        assert_eq!((g.rows(), g.get(0, 1), g.get(1, 3)), (2, 9.0, 3.0));
        let cidx = [3u32, 3, 1];
        let gc = a.gather_cols(&cidx).unwrap();
        assert_eq!((gc.cols(), gc.get(1, 0), gc.get(2, 2)), (3, 7.0, 9.0));
    }
}
