//! Output writer throughput: `cargo run --release --example output_throughput -- [ROWS] [DIM]
//! [DIR]` writes ROWS (default 100000) random unit rows of DIM (default 768) values through the
//! job's writer into `.npy` and `.parquet` files, float32 and float16, in DIR (default a
//! temporary directory), syncing as a checkpoint would every 8192 rows, and prints rows/s, the
//! time of the final step (the `.npy` header; the Parquet row groups spliced into one file) and
//! the file size.

use std::path::PathBuf;
use std::time::Instant;

use gemma_embed::index::checkpoint::sibling;
use gemma_embed::index::output::{Dtype, OutputWriter};
use gemma_embed::index::parquet_output::DEFAULT_ROW_GROUP_ROWS;
use gemma_embed::index::OutputFormat;
use gemma_embed::rng::SplitMix64;
use serde_json::Value;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rows: usize = args.first().map_or(Ok(100_000), |s| s.parse())?;
    let dim: usize = args.get(1).map_or(Ok(768), |s| s.parse())?;
    let tmp = tempfile::tempdir()?;
    let dir = args
        .get(2)
        .map_or_else(|| tmp.path().to_path_buf(), PathBuf::from);
    // A few thousand distinct rows, reused: generating them is not what is measured.
    let mut rng = SplitMix64::new(7);
    let pool: Vec<Vec<f32>> = (0..4096)
        .map(|_| {
            let row = rng.f32s(dim, -1.0, 1.0);
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            row.iter().map(|x| x / norm).collect()
        })
        .collect();
    println!("{rows} rows of {dim} values");
    for (format, extension) in [
        (OutputFormat::Npy, "npy"),
        (OutputFormat::Parquet, "parquet"),
    ] {
        for dtype in [Dtype::F32, Dtype::F16] {
            let dest = dir.join(format!("out-{dtype:?}.{extension}"));
            let partial = sibling(&dest, ".partial");
            let start = Instant::now();
            let mut writer =
                OutputWriter::open(&partial, format, dtype, dim, DEFAULT_ROW_GROUP_ROWS, None)?;
            for i in 0..rows {
                writer.write_row(&Value::from(format!("doc-{i}")), &pool[i % pool.len()])?;
                if (i + 1) % 8192 == 0 {
                    writer.sync()?;
                }
            }
            writer.sync()?;
            let written = start.elapsed().as_secs_f64();
            writer.finish(&partial, &dest)?;
            let total = start.elapsed().as_secs_f64();
            let bytes = std::fs::metadata(&dest)?.len();
            println!(
                "{extension:>8} {dtype:?}: {:>9.0} rows/s, rows {written:.2} s + finish {:.2} s, \
                 {:.1} MB",
                rows as f64 / total,
                total - written,
                bytes as f64 / 1e6
            );
            std::fs::remove_file(&dest)?;
        }
    }
    Ok(())
}
