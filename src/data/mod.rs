//! Images in, tensors out. Knows nothing of CLIP internals.

pub mod augment;
pub mod benchmarks;
pub mod decode;
pub mod loader;
pub mod scan;
pub mod shared;
pub mod shift;
pub mod source;
pub mod synthetic;

use source::{Dataset, Split};

/// The adaptation pool U and the evaluation set of a dataset: its train and test splits
/// where it has them, else all of it as U and no test set.
pub fn split_data(ds: &Dataset) -> (Dataset, Option<Dataset>) {
    let splits = ds.splits();
    if splits.contains(&Split::Train) {
        let test = splits.contains(&Split::Test).then(|| ds.split(Split::Test));
        (ds.split(Split::Train), test)
    } else {
        (ds.clone(), None)
    }
}
