//! The `gemma-embed` command line: one function per subcommand, anyhow at the edge.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use gemma_embed::backend::{self, BackendKind};
use gemma_embed::bench;
use gemma_embed::engine::{Engine, EngineConfig};
use gemma_embed::index::checkpoint::OutputLock;
use gemma_embed::index::job::{self, JobOptions, OnError, ProgressMode, Shard};
use gemma_embed::index::many::FileTurn;
use gemma_embed::index::output::Dtype;
use gemma_embed::index::{self, AtomicFile, InputColumns, InputFormat, OutputFormat, Record};
use gemma_embed::model::{resolve_model_dir, Model, ModelConfig, DEFAULT_MODEL_ID};
use gemma_embed::server;
use gemma_embed::tokenize::{DefaultPrompt, Tokenizer, Truncation};

#[derive(Parser)]
#[command(
    name = "gemma-embed",
    version,
    about = "Text embeddings with EmbeddingGemma-300m"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed every document of an input file into a .jsonl, .npy or .parquet output, in input order;
    /// streams, checkpoints, and resumes when rerun after an interruption.
    Embed(EmbedArgs),
    /// Merge the outputs of `embed --shard 0/N` .. `N-1/N` back into input order.
    Merge(MergeArgs),
    /// Write the token ids of every input line as JSON Lines.
    Tokenize(TokenizeArgs),
    /// Show the model configuration and the backends of this build.
    Info(InfoArgs),
    /// Measure throughput (offline) or latency under load (online, through the engine) on
    /// synthetic workloads of random token ids.
    Bench(BenchArgs),
    /// Serve embeddings over HTTP: OpenAI `/v1/embeddings` and TEI `/embed` (also `/`,
    /// `/invocations`, `/vertex`), `/similarity`, `/tokenize`, `/decode`, `/health`, `/info`,
    /// `/metrics`.
    Serve(ServeArgs),
    /// Check every CUDA kernel against its CPU reference on device 0 and time it; exits
    /// non-zero when any check fails.
    CheckKernels(CheckKernelsArgs),
    /// Time every operation of the CUDA forward (GEMMs, kernels, copies) on workloads of random
    /// token ids, with the kernel choices of GEMMA_EMBED_QKV, _ATTENTION, _MLP and _BRANCH.
    Profile(ProfileArgs),
}

#[derive(Args)]
struct ModelArg {
    /// A local model directory or a Hugging Face id (resolved through the HF cache).
    #[arg(long, default_value = DEFAULT_MODEL_ID)]
    model: String,
}

/// Input options shared by `embed` and `tokenize`.
#[derive(Args)]
struct InputArgs {
    /// JSON Lines (`text` or `ids`, optional `id`, `prompt_name`; other fields ignored), plain
    /// text (one document per line), CSV with a header or Parquet (`--text-column`,
    /// `--id-column`), or a directory (every file below it one document, id its relative path);
    /// `-` is stdin. JSON Lines, text and CSV may be gzip- or zstd-compressed. `embed` takes
    /// several files too (`--input data/*.jsonl.gz`): one output each in the --output directory.
    #[arg(long, num_args = 1.., required = true)]
    input: Vec<String>,
    /// Input format; by default from the extension (.jsonl/.ndjson/.json: jsonl, .txt: text, .csv: csv,
    /// each perhaps with .gz or .zst after it; .parquet: parquet; `-`: jsonl; a directory: dir).
    #[arg(long)]
    input_format: Option<InputFormat>,
    /// Named prompt from the model (`query`, `document`, `STS`, ...) for lines without
    /// `prompt_name`.
    #[arg(long, conflicts_with = "prompt")]
    prompt_name: Option<String>,
    /// A raw prompt string prepended as is to lines without `prompt_name`.
    #[arg(long)]
    prompt: Option<String>,
    /// Fail on inputs longer than the model's max_seq_length instead of truncating them.
    #[arg(long)]
    no_truncate: bool,
    /// The column (JSON Lines: the field) holding the text (Parquet: utf8, large_utf8 or
    /// utf8_view).
    #[arg(long, default_value = "text")]
    text_column: String,
    /// The column (JSON Lines: the field, in every line; by default `id` where present) holding
    /// the id (Parquet: strings or integers; default: the 1-based line number, in Parquet the row
    /// number).
    #[arg(long)]
    id_column: Option<String>,
    /// The column (JSON Lines: the field, in every line) holding a title: each document's prompt
    /// is then EmbeddingGemma's document prompt with its title, `title: {title} | text: ` (`none`
    /// for a null, empty or blank title). JSON Lines, CSV and Parquet input.
    #[arg(long, conflicts_with_all = ["prompt", "prompt_name"])]
    title_column: Option<String>,
}

impl InputArgs {
    fn columns(&self) -> InputColumns {
        InputColumns {
            text: self.text_column.clone(),
            id: self.id_column.clone(),
            title: self.title_column.clone(),
        }
    }

    /// The one input of a command that takes one.
    fn single(&self) -> Result<&str> {
        match self.input.as_slice() {
            [input] => Ok(input),
            inputs => bail!(
                "--input takes one file here, got {}: {}",
                inputs.len(),
                inputs.join(" ")
            ),
        }
    }

    /// `--input-format`, else the format of `path`'s extension; refused where the columns
    /// have no place in it.
    fn format_of(&self, path: &str) -> Result<InputFormat> {
        let format = match self.input_format {
            Some(format) => format,
            None => InputFormat::from_path(path)?,
        };
        self.columns().check_fit(path, format)?;
        Ok(format)
    }

    /// The prompt of documents without `prompt_name` (`--prompt`, `--prompt-name` or the model's
    /// default).
    fn job_prompt<'a>(&'a self, tokenizer: &'a Tokenizer) -> Result<Option<&'a str>> {
        Ok(index::job_prompt(
            tokenizer,
            self.prompt.as_deref(),
            self.prompt_name.as_deref(),
        )?)
    }

    fn truncation(&self) -> Truncation {
        if self.no_truncate {
            Truncation::Refuse
        } else {
            Truncation::Truncate
        }
    }
}

#[derive(Args)]
struct EmbedArgs {
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    input: InputArgs,
    /// Output file: .jsonl (`{"id", "embedding"}` per line), .npy ([N, D]) or .parquet (`id`
    /// utf8, `embedding` fixed-size list of D floats). Written as OUTPUT.partial (a directory
    /// of row groups for Parquet) with a checkpoint OUTPUT.checkpoint; rerunning the same
    /// command after an interruption continues from the checkpoint. With several inputs, a
    /// directory: one output per input, named after it (`a.jsonl.gz` -> `a.npy`).
    #[arg(long)]
    output: PathBuf,
    /// With several inputs: npy, jsonl or parquet, the format of their outputs.
    #[arg(long)]
    output_format: Option<OutputFormat>,
    /// Element type of a .npy or .parquet output: f32 or f16.
    #[arg(long, default_value = "f32")]
    dtype: Dtype,
    /// Rows per row group of a .parquet output (each is written out once full) [default:
    /// 8192].
    #[arg(long)]
    row_group_rows: Option<usize>,
    /// Embed only every N-th document starting at document I (0-based), e.g. `--shard 1/4`;
    /// `gemma-embed merge` puts the shard outputs back together. With several inputs, every
    /// N-th file instead (their outputs need no merge).
    #[arg(long, default_value = "0/1")]
    shard: Shard,
    /// fail: stop at the first bad document; skip: log it to OUTPUT.rejects.jsonl and go on.
    #[arg(long, default_value = "fail")]
    on_error: OnError,
    /// Matryoshka truncation (then renormalized); 768, 512, 256 and 128 are the trained sizes.
    #[arg(long)]
    dimensions: Option<usize>,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    backend: BackendKind,
    /// Token budget of one forward batch (a longer single input runs alone).
    #[arg(long, default_value_t = 16384)]
    max_batch_tokens: usize,
    /// Sequence cap of one forward batch.
    #[arg(long, default_value_t = 1024)]
    max_batch_sequences: usize,
    /// Documents per engine request (the unit of reading, ordering and checkpointing).
    #[arg(long, default_value_t = 64)]
    docs_per_request: usize,
    /// The least time between two checkpoints, in milliseconds (0: after every request). A kill
    /// loses the batches in flight and at most this much of finished work.
    #[arg(long, default_value_t = 200)]
    checkpoint_interval_ms: u64,
    /// Progress: a bar on a terminal, a line every 10 s otherwise; `--quiet` turns it off.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct MergeArgs {
    /// The outputs of one job's `--shard 0/N` .. `N-1/N` runs (any order; each with the
    /// `.shard.json` its run wrote beside it), all .npy, all .jsonl or all .parquet.
    #[arg(required = true)]
    shards: Vec<PathBuf>,
    /// The merged file.
    #[arg(long)]
    output: PathBuf,
}

#[derive(Args)]
struct TokenizeArgs {
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    input: InputArgs,
    /// Output .jsonl file (`{"id", "ids"}` per line); stdout when absent.
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct InfoArgs {
    #[command(flatten)]
    model: ModelArg,
}

#[derive(Args)]
struct CheckKernelsArgs {
    /// Seed of the random inputs (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Also write the results as JSON to this file (rewritten after each family, so a later
    /// family that hangs does not take the earlier results with it).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run only these check families (comma separated or repeated; see --list-families).
    #[arg(long = "family", value_delimiter = ',')]
    families: Vec<String>,
    /// Print the check families in the order they run, and exit.
    #[arg(long)]
    list_families: bool,
}

#[derive(Args)]
struct ProfileArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Fixed-length workloads, one per length, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "512")]
    lengths: Vec<usize>,
    /// Add the mixed workload: lengths uniform in 16..=1024.
    #[arg(long)]
    mixed: bool,
    /// Tokens per batch.
    #[arg(long, default_value_t = 65_536)]
    batch_tokens: usize,
    /// Profiled batches per workload.
    #[arg(long, default_value_t = 3)]
    batches: usize,
    /// Unprofiled batches first, per workload.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Seed of the random token ids.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Embed(args) => embed(args),
        Command::Merge(args) => merge(args),
        Command::Tokenize(args) => tokenize(args),
        Command::Info(args) => info(args),
        Command::Bench(args) => bench(args),
        Command::CheckKernels(args) => check_kernels(args),
        Command::Profile(args) => profile(args),
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", error_text(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, a cause left out where the message before it already ends with
/// it (the library's errors write their I/O cause into their own message).
fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let message = cause.to_string();
        if !text.ends_with(&message) {
            if !text.is_empty() {
                text += ": ";
            }
            text += &message;
        }
    }
    text
}

/// Read the input and tokenize it: the records and their token ids, in order.
fn read_and_tokenize(
    input: &InputArgs,
    tokenizer: &Tokenizer,
) -> Result<(Vec<Record>, Vec<Vec<u32>>)> {
    let path = input.single()?;
    let format = input.format_of(path)?;
    let records = index::read_records(path, format, &input.columns())?;
    let ids = index::tokenize_records(
        tokenizer,
        &records,
        (path, format),
        input.job_prompt(tokenizer)?,
        input.truncation(),
    )?;
    Ok((records, ids))
}

fn embed(args: EmbedArgs) -> Result<()> {
    let input = &args.input;
    // `--output-format` asks for the directory mode whatever the count: a glob (`data/*.gz`)
    // may match one file.
    let several = input.input.len() > 1 || args.output_format.is_some();
    let output_format = match args.output_format {
        Some(format) => format,
        None if several => bail!(
            "several inputs write one output each into the --output directory: give \
             --output-format npy|jsonl|parquet"
        ),
        None => OutputFormat::from_path(&args.output)?,
    };
    if args.dtype == Dtype::F16 && output_format == OutputFormat::Jsonl {
        bail!("--dtype f16 is for .npy and .parquet outputs");
    }
    if args.row_group_rows.is_some() && output_format != OutputFormat::Parquet {
        bail!("--row-group-rows is for .parquet outputs");
    }
    let row_group_rows = args
        .row_group_rows
        .unwrap_or(index::parquet_output::DEFAULT_ROW_GROUP_ROWS);
    for (flag, value) in [
        ("--row-group-rows", row_group_rows),
        ("--max-batch-tokens", args.max_batch_tokens),
        ("--max-batch-sequences", args.max_batch_sequences),
        ("--docs-per-request", args.docs_per_request),
    ] {
        if value == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    // Every input's format before the model loads, so that a bad name fails at once.
    let input_formats = input
        .input
        .iter()
        .map(|path| input.format_of(path))
        .collect::<Result<Vec<_>>>()?;
    let jobs = if several {
        index::many::plan(&input.input, &args.output, output_format)?
    } else {
        refuse_output_over_input(&input.input[0], &args.output, "embeddings")?;
        // A run already writing the output refuses this one now, not after the model loads
        // (the job takes the lock again for its whole run).
        drop(job::lock_output(&input.input[0], &args.output)?);
        vec![index::many::FileJob {
            input: input.input[0].clone(),
            output: args.output.clone(),
        }]
    };
    let dir = resolve_model_dir(&args.model.model)?;
    let config = ModelConfig::load(&dir)?;
    let dimensions = args.dimensions.unwrap_or(config.embedding_dim);
    gemma_embed::model::check_dimensions(dimensions, config.embedding_dim)?;
    let tokenizer = Tokenizer::load(&dir, &config)?;
    let job_prompt = input.job_prompt(&tokenizer)?.map(String::from);
    let model = Arc::new(Model::load_dir(&dir)?);
    let (backend, note) = backend::open(args.backend, Arc::clone(&model))?;
    eprintln!("backend: {note}");
    let backend_name = backend.name();
    // Admission waits (never rejects) in a job; the bound keeps CHUNKS_IN_FLIGHT requests queued.
    let queued = args.docs_per_request * 16;
    let engine = Engine::start(
        backend,
        tokenizer,
        config.embedding_dim,
        EngineConfig {
            max_batch_tokens: args.max_batch_tokens,
            max_batch_sequences: args.max_batch_sequences,
            max_queued_inputs: queued,
            max_queued_tokens: queued * config.max_seq_len,
            ..EngineConfig::default()
        },
    )?;
    let options = JobOptions {
        input: jobs[0].input.clone(),
        input_format: input_formats[0],
        columns: input.columns(),
        output: jobs[0].output.clone(),
        output_format,
        dtype: args.dtype,
        dimensions,
        row_group_rows,
        job_prompt,
        truncation: input.truncation(),
        // Several inputs are split by file: each file's job embeds all of it.
        shard: if several {
            Shard::default()
        } else {
            args.shard
        },
        on_error: args.on_error,
        docs_per_request: args.docs_per_request,
        checkpoint_interval: std::time::Duration::from_millis(args.checkpoint_interval_ms),
        progress: if args.quiet {
            ProgressMode::Off
        } else {
            ProgressMode::for_stderr()
        },
        // Batch sizes are left out on purpose: embeddings do not depend on them. So is the
        // model's path: the CRC of its weights names it wherever it lies (a Hugging Face cache
        // moving to a new snapshot of the same weights, a copied directory).
        params: serde_json::json!({
            "model_crc32": index::content_crc32(&gemma_embed::model::weight_files(&dir)?)?,
            "backend": backend_name,
        }),
    };
    let manifest_written =
        several && index::many::claim_directory(&args.output, &options.output_params())?;
    let start = std::time::Instant::now();
    let mut total = job::JobSummary::default();
    let (mut embedded, mut done_before, mut done_by_others) = (0, 0, 0);
    let mine: Vec<usize> = (0..jobs.len())
        .filter(|&i| !several || args.shard.holds(i as u64))
        .collect();
    let options_of = |i: usize| JobOptions {
        input: jobs[i].input.clone(),
        input_format: input_formats[i],
        output: jobs[i].output.clone(),
        ..options.clone()
    };
    let mut run_jobs = || -> Result<()> {
        let mut run_job = |options: &JobOptions, lock: Option<&OutputLock>| -> Result<()> {
            let summary = match lock {
                Some(lock) => job::run_holding(&engine, options, lock)?,
                None => job::run(&engine, options)?,
            };
            print_job_summary(&summary, options, backend_name);
            embedded += 1;
            total.docs += summary.docs;
            total.tokens += summary.tokens;
            Ok(())
        };
        if !several {
            return run_job(&options_of(0), None);
        }
        let file = |n: usize, i: usize| {
            format!(
                "[{}/{}] {} -> {}",
                n + 1,
                mine.len(),
                jobs[i].input,
                jobs[i].output.display()
            )
        };
        // Files another run is writing (runs started on the same files share them): come back
        // to once this run's own are done.
        let mut taken = Vec::new();
        // Told apart from the files another run finishes while this one works on its own.
        let done_at_start = mine
            .iter()
            .map(|&i| jobs[i].is_done())
            .collect::<gemma_embed::Result<Vec<bool>>>()?;
        for (n, &i) in mine.iter().enumerate() {
            match FileTurn::of(&jobs[i])? {
                FileTurn::Embed(lock) => {
                    eprintln!("{}", file(n, i));
                    run_job(&options_of(i), Some(&lock))?;
                }
                FileTurn::Done if done_at_start[n] => {
                    eprintln!("{}: done before", file(n, i));
                    done_before += 1;
                }
                FileTurn::Done => {
                    eprintln!("{}: done by another run meanwhile", file(n, i));
                    done_by_others += 1;
                }
                FileTurn::TakenByAnother => {
                    eprintln!(
                        "{}: another run is writing it, back to it at the end",
                        file(n, i)
                    );
                    taken.push((n, i));
                }
            }
        }
        // Each one is finished by its run, or taken over (resumed) when that run stopped: an
        // exit without error means every file's output is complete.
        for (n, i) in taken {
            let mut told = false;
            let lock = loop {
                match FileTurn::of(&jobs[i])? {
                    FileTurn::Embed(lock) => break Some(lock),
                    FileTurn::Done => break None,
                    FileTurn::TakenByAnother => {
                        if !told {
                            eprintln!("{}: waiting for the run writing it", file(n, i));
                            told = true;
                        }
                        std::thread::sleep(std::time::Duration::from_secs(1));
                    }
                }
            };
            match lock {
                Some(lock) => {
                    eprintln!("{}: its run stopped; taking it over", file(n, i));
                    run_job(&options_of(i), Some(&lock))?;
                }
                None => {
                    eprintln!("{}: done by the other run", file(n, i));
                    done_by_others += 1;
                }
            }
        }
        Ok(())
    };
    if let Err(error) = run_jobs() {
        // Nothing written: the directory goes back unclaimed, for the rerun with fixed flags
        // (only by the run that claimed it, not by one of the shards that found it claimed).
        if manifest_written && index::many::release_directory(&args.output).unwrap_or(false) {
            eprintln!(
                "{} holds no output: its manifest is removed",
                args.output.display()
            );
        }
        return Err(error);
    }
    let stats = engine.stats();
    drop(engine);
    let seconds = start.elapsed().as_secs_f64();
    if several {
        eprintln!(
            "{} files: {embedded} embedded in this run, {done_before} done before{}; {} docs, {} \
             tokens in {seconds:.2} s ({:.0} tokens/s) -> {}",
            mine.len(),
            if done_by_others > 0 {
                format!(", {done_by_others} by other runs meanwhile")
            } else {
                String::new()
            },
            total.docs,
            total.tokens,
            total.tokens as f64 / seconds.max(1e-9),
            args.output.display()
        );
    }
    if stats.batches > 0 {
        let forward = stats.forward_time.as_secs_f64();
        eprintln!(
            "backend: {} batches ({:.0} sequences, {:.0} tokens on average), forward {forward:.2} s \
             = {:.1}% of the job's wall time ({:.0} tokens/s while computing)",
            stats.batches,
            stats.batch_sequences as f64 / stats.batches as f64,
            stats.batch_tokens as f64 / stats.batches as f64,
            100.0 * forward / seconds.max(1e-9),
            stats.batch_tokens as f64 / forward.max(1e-9),
        );
    }
    Ok(())
}

/// One job's closing line: documents, tokens, time and rate, the output and its rows.
fn print_job_summary(summary: &job::JobSummary, options: &JobOptions, backend_name: &str) {
    if summary.done_before {
        eprintln!(
            "{}: shard {}/{} done before, by a run of the same job ({} rows, {} rejected; its record \
             is {}): nothing to do; delete it to embed it again",
            options.output.display(),
            options.shard.index,
            options.shard.count,
            summary.rows,
            summary.rejected,
            index::merge::ShardRecord::path(&options.output).display()
        );
        return;
    }
    let rejected = if summary.rejected > 0 {
        format!(
            ", {} rejected (see {})",
            summary.rejected,
            options.rejects_path().display()
        )
    } else {
        String::new()
    };
    eprintln!(
        "embedded {} docs, {} tokens in {:.2} s ({:.1} docs/s, {:.0} tokens/s) on {backend_name} \
         -> {} ({} rows{}{rejected})",
        summary.docs,
        summary.tokens,
        summary.seconds,
        summary.docs as f64 / summary.seconds.max(1e-9),
        summary.tokens as f64 / summary.seconds.max(1e-9),
        options.output.display(),
        summary.rows,
        if summary.resumed_rows > 0 {
            format!(", {} from the interrupted run", summary.resumed_rows)
        } else {
            String::new()
        },
    );
}

fn merge(args: MergeArgs) -> Result<()> {
    let merged = index::merge::merge(&args.shards, &args.output)?;
    let rejected = if merged.rejected > 0 {
        format!(
            ", {} rejected (see {}.rejects.jsonl)",
            merged.rejected,
            args.output.display()
        )
    } else {
        String::new()
    };
    eprintln!(
        "merged {} shards: {} rows{rejected} -> {}",
        args.shards.len(),
        merged.rows,
        args.output.display()
    );
    Ok(())
}

/// `output` must not be the file `input`: the `what` written there would replace it.
fn refuse_output_over_input(input: &str, output: &Path, what: &str) -> Result<()> {
    if index::many::same_file(Path::new(input), output) {
        bail!(
            "--output {} is the input: the {what} would overwrite it",
            output.display()
        );
    }
    Ok(())
}

fn tokenize(args: TokenizeArgs) -> Result<()> {
    if let Some(output) = &args.output {
        refuse_output_over_input(args.input.single()?, output, "token ids")?;
    }
    let dir = resolve_model_dir(&args.model.model)?;
    let config = ModelConfig::load(&dir)?;
    let tokenizer = Tokenizer::load(&dir, &config)?;
    let (records, sequences) = read_and_tokenize(&args.input, &tokenizer)?;
    let lines = records.iter().zip(&sequences).map(|(record, ids)| {
        serde_json::json!({ "id": record.output_id(), "ids": ids }).to_string() + "\n"
    });
    match &args.output {
        Some(path) => {
            if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
                bail!(
                    "{}: the output of `tokenize` must end in .jsonl",
                    path.display()
                );
            }
            let mut out = AtomicFile::create(path)?;
            for line in lines {
                out.writer()
                    .write_all(line.as_bytes())
                    .map_err(|e| out.io_error(e))?;
            }
            out.commit()?;
        }
        None => write_stdout(lines)?,
    }
    Ok(())
}

/// Write `texts` to stdout; a reader that has what it wanted (`| head`) stops it quietly, as
/// `cat` would, instead of the panic of `println!`.
fn write_stdout<T: AsRef<str>>(texts: impl IntoIterator<Item = T>) -> Result<()> {
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let written = texts
        .into_iter()
        .try_for_each(|text| stdout.write_all(text.as_ref().as_bytes()))
        .and_then(|()| stdout.flush());
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written.context("writing to stdout"),
    }
}

fn info(args: InfoArgs) -> Result<()> {
    let archs = backend::cuda::EMBEDDED_ARCHS;
    // The build's own line comes first, whether or not the model loads.
    write_stdout([format!(
        "cuda kernels:   {}\n",
        if archs.is_empty() { "none" } else { archs }
    )])?;
    let dir = resolve_model_dir(&args.model.model)?;
    let c = ModelConfig::load(&dir)?;
    let schedule: String = c
        .layer_kinds
        .iter()
        .map(|k| match k {
            gemma_embed::model::LayerKind::Sliding => 'S',
            gemma_embed::model::LayerKind::Full => 'F',
        })
        .collect();
    let prompts = if c.prompts.is_empty() {
        "(none)".to_string()
    } else {
        c.prompts
            .iter()
            .map(|(name, prompt)| format!("{name} = {prompt:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let lines = [
        format!("model:          {}", display_dir(&dir)),
        format!("weights dtype:  {} (computed in float32)", c.weight_dtype),
        format!(
            "layers:         {} (schedule {schedule}: S = sliding window, F = full attention)",
            c.num_layers
        ),
        format!(
            "hidden:         {} (MLP {}, vocab {})",
            c.hidden_size, c.intermediate_size, c.vocab_size
        ),
        format!(
            "heads:          {} query, {} key/value, head_dim {}",
            c.num_heads, c.num_kv_heads, c.head_dim
        ),
        format!(
            "window:         |i - j| <= {} on sliding layers",
            c.window_radius
        ),
        format!(
            "rope theta:     {} sliding, {} full",
            c.rope_theta_sliding, c.rope_theta_full
        ),
        format!("max_seq_len:    {}", c.max_seq_len),
        format!(
            "embedding:      {} (Dense {:?}, mean pooling, L2 normalized)",
            c.embedding_dim, c.dense_out_features
        ),
        format!("prompts:        {prompts}"),
        format!(
            "default prompt: {}",
            c.default_prompt_name.as_deref().unwrap_or("(none)")
        ),
        format!(
            "backends:       {}",
            backend::available_backends().join(", ")
        ),
    ];
    write_stdout(lines.map(|line| line + "\n"))
}

/// Fail now, before any measuring, on a report path that cannot be written (no such directory,
/// no permission), instead of after the runs with their results lost. A file that was not there
/// is removed again; one that was is left as it is.
fn check_writable(path: &Path, flag: &str) -> Result<()> {
    if path == Path::new("-") {
        bail!("{flag} -: give a file name (standard output carries the table)");
    }
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("{flag} {}: cannot write there", path.display()))?;
    if !existed {
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

fn check_kernels(args: CheckKernelsArgs) -> Result<()> {
    if args.list_families {
        let names = backend::cuda::CheckFamily::ALL.map(|family| format!("{}\n", family.name()));
        write_stdout(names)?;
        return Ok(());
    }
    let seed = match args.seed {
        Some(seed) => seed,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64,
    };
    println!("seed: {seed}");
    let mut write_so_far = |checks: &[backend::cuda::KernelCheck]| match &args.json {
        Some(path) => backend::cuda::write_json(checks, path),
        None => Ok(()),
    };
    let backend::cuda::KernelChecks { device, checks } =
        backend::cuda::run_kernel_checks(seed, &args.families, &mut write_so_far)?;
    println!("device: {device}, seed: {seed}");
    backend::cuda::print_table(&checks, &mut std::io::stdout().lock())?;
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} of {} kernel checks failed (seed {seed}): {}",
            failed.len(),
            checks.len(),
            failed.join(", ")
        );
    }
    println!("all {} kernel checks passed", checks.len());
    Ok(())
}

fn profile(args: ProfileArgs) -> Result<()> {
    let options = bench::profile::ProfileOptions {
        lengths: args.lengths,
        mixed: args.mixed,
        batch_tokens: args.batch_tokens,
        batches: args.batches,
        warmup: args.warmup,
        seed: args.seed,
    };
    if let Some(path) = &args.json {
        check_writable(path, "--json")?;
    }
    let model = Model::load(&args.model.model)?;
    options.check(&model.config)?;
    let mut backend = backend::cuda::CudaBackend::new(&model)?;
    let report = bench::profile::run(&mut backend, &model.config, &options)?;
    bench::profile::print(&report, &mut std::io::stdout().lock())?;
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

fn display_dir(dir: &Path) -> String {
    std::fs::canonicalize(dir)
        .unwrap_or_else(|_| dir.to_path_buf())
        .display()
        .to_string()
}

/// `bench --mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BenchMode {
    /// The whole workload queued at once, packed into batches, straight on the backend.
    Offline,
    /// Requests through the engine at a fixed --concurrency or Poisson --rate; latencies.
    Online,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArg,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    backend: BackendKind,
    /// offline (throughput, no engine) or online (through the engine, with latencies).
    #[arg(long, value_enum, default_value = "offline")]
    mode: BenchMode,
    /// Fixed-length workloads, one per length, comma separated (`--lengths` alone: none)
    /// [default: 16,128,512,2048; none with --corpus; with --compare and none of --tokens,
    /// --mixed, --corpus: the workloads of the compared report].
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    lengths: Option<Vec<usize>>,
    /// Add the mixed workload: lengths uniform in 16..=1024 (the draw of tools/bench_reference.py).
    #[arg(long)]
    mixed: bool,
    /// Add a corpus workload: the documents of this input, read as `embed` reads it (JSON Lines,
    /// text or CSV, each perhaps gzip- or zstd-compressed, Parquet, a directory, or `-`),
    /// tokenized with their prompts, truncated to max_seq_length (tokenization is not timed).
    /// Without --lengths, the only workload.
    #[arg(long)]
    corpus: Option<String>,
    /// Corpus: only its first N documents (the rest of the file is not read).
    #[arg(long)]
    corpus_docs: Option<usize>,
    /// Corpus: its format (jsonl, text, csv, parquet or dir), as `embed --input-format`
    /// [default: from the extension].
    #[arg(long)]
    corpus_format: Option<InputFormat>,
    /// Corpus: the column (JSON Lines: the field) holding the text [default: text].
    #[arg(long)]
    text_column: Option<String>,
    /// Corpus: the column (JSON Lines: the field) holding a title, for EmbeddingGemma's document
    /// prompt `title: {title} | text: `, as `embed --title-column`.
    #[arg(long, conflicts_with = "prompt_name")]
    title_column: Option<String>,
    /// Corpus: the named prompt for documents without their own `prompt_name`.
    #[arg(long)]
    prompt_name: Option<String>,
    /// Tokens per measured run of each workload [default: 262144 on a GPU, 4096 on the CPU].
    #[arg(long)]
    tokens: Option<usize>,
    /// Token budgets of one forward batch, comma separated (each one a run)
    /// [default: 65536 on a GPU, 8192 on the CPU].
    #[arg(long, value_delimiter = ',')]
    max_batch_tokens: Vec<usize>,
    /// Online, closed loop: clients each sending its next request when the last is answered;
    /// comma separated (each one a run).
    #[arg(long, value_delimiter = ',', conflicts_with = "rate")]
    concurrency: Vec<usize>,
    /// Online, open loop: Poisson arrivals, requests per second; comma separated (each one a run).
    #[arg(long, value_delimiter = ',')]
    rate: Vec<f64>,
    /// Online: inputs (sequences of the workload) per request.
    #[arg(long, default_value_t = 1)]
    inputs_per_request: usize,
    /// Measured runs per workload and setting (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Unmeasured runs before the measured ones.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Matryoshka width of the output [default: the model's embedding width].
    #[arg(long)]
    dimensions: Option<usize>,
    /// Seed of the random token ids, the mixed length draw and the arrival times.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The GPU's dense bf16 peak in TFLOP/s, for the % of peak [default: known for H100, H200
    /// and A100 from the device name].
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// Also write the report as JSON (the schema of tools/bench_reference.py).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Compare with another report (tools/bench_reference.py or `bench --json`): tokens/s per
    /// workload, theirs, and the ratio.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Draw throughput per workload and (online) latency vs load to a .png or .svg file.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// The documents of `--corpus`, tokenized as `embed` tokenizes them.
fn corpus_workload(args: &BenchArgs, path: &str, model: &Model) -> Result<bench::Workload> {
    if args.corpus_docs == Some(0) {
        bail!("--corpus-docs must be at least 1");
    }
    let format = match args.corpus_format {
        Some(format) => format,
        None => InputFormat::from_path(path)?,
    };
    let columns = InputColumns {
        text: args.text_column.clone().unwrap_or_else(|| "text".into()),
        id: None,
        title: args.title_column.clone(),
    };
    columns.check_fit(path, format)?;
    let records = index::read_first_records(path, format, &columns, args.corpus_docs)?;
    let tokenizer = Tokenizer::for_model(model)?;
    let prompt = tokenizer.named_or_default_prompt(args.prompt_name.as_deref())?;
    let ids = index::tokenize_records(
        &tokenizer,
        &records,
        (path, format),
        prompt,
        Truncation::Truncate,
    )?;
    let stem = match Path::new(path).file_stem() {
        Some(stem) if path != "-" => stem.to_string_lossy().into_owned(),
        _ => "stdin".into(),
    };
    let workload = bench::Workload::corpus(&stem, ids);
    eprintln!(
        "corpus {path}: {} documents, {} tokens",
        workload.lengths.len(),
        workload.num_tokens()
    );
    Ok(workload)
}

/// `gemma-embed bench`: throughput (and online latency) on synthetic workloads, through the
/// same backend path as `embed` (offline) or the engine (online).
fn bench(args: BenchArgs) -> Result<()> {
    let loads: Vec<bench::Load> = match args.mode {
        BenchMode::Offline => {
            if !args.concurrency.is_empty() || !args.rate.is_empty() || args.inputs_per_request != 1
            {
                bail!("--concurrency, --rate and --inputs-per-request are for --mode online");
            }
            Vec::new()
        }
        BenchMode::Online => {
            let loads: Vec<bench::Load> = args
                .concurrency
                .iter()
                .map(|&c| bench::Load::Concurrency(c))
                .chain(args.rate.iter().map(|&r| bench::Load::Rate(r)))
                .collect();
            if loads.is_empty() {
                bail!("--mode online needs --concurrency C or --rate R (requests/s)");
            }
            loads
        }
    };
    if args.corpus.is_none() {
        let corpus_flags: Vec<&str> = [
            ("--corpus-docs", args.corpus_docs.is_some()),
            ("--corpus-format", args.corpus_format.is_some()),
            ("--text-column", args.text_column.is_some()),
            ("--title-column", args.title_column.is_some()),
            ("--prompt-name", args.prompt_name.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect();
        if !corpus_flags.is_empty() {
            bail!(
                "{} describe the --corpus workload: give --corpus FILE",
                corpus_flags.join(", ")
            );
        }
    }
    if let Some(peak) = args.peak_tflops {
        if !(peak.is_finite() && peak > 0.0) {
            bail!("--peak-tflops must be a positive number of TFLOP/s, got {peak}");
        }
    }
    if let Some(tokens) = args.tokens {
        if !(1..=bench::MAX_TOKENS_PER_RUN).contains(&tokens) {
            bail!("--tokens must be in 1..={}", bench::MAX_TOKENS_PER_RUN);
        }
        let synthetic = args.mixed || args.lengths.as_ref().is_some_and(|l| !l.is_empty());
        if args.corpus.is_some() && !synthetic {
            bail!(
                "--tokens sizes the synthetic workloads (--lengths, --mixed); a --corpus workload \
                 is its documents (--corpus-docs N takes the first N)"
            );
        }
    }
    // Each file written is no other one named: the last written would be all that is left.
    let files = [
        ("--json", &args.json),
        ("--plot", &args.plot),
        ("--compare", &args.compare),
    ];
    for (i, (flag, path)) in files.iter().enumerate() {
        for (other, other_path) in &files[i + 1..] {
            if let (Some(a), Some(b)) = (path, other_path) {
                if index::many::same_file(a, b) {
                    bail!("{flag} and {other} name one file, {}", a.display());
                }
            }
        }
    }
    // Fail on a bad output path or a missing font before measuring anything.
    if let Some(path) = &args.plot {
        bench::plot::prepare(path)?;
        check_writable(path, "--plot")?;
    }
    if let Some(path) = &args.json {
        check_writable(path, "--json")?;
    }
    let other = args
        .compare
        .as_deref()
        .map(bench::compare::OtherReport::load)
        .transpose()?;
    let model = Arc::new(Model::load(&args.model.model)?);
    if let (Some(other), Some(path)) = (&other, &args.compare) {
        other.check_model(path, &model.config)?;
        let mode = match args.mode {
            BenchMode::Offline => "offline",
            BenchMode::Online => "online",
        };
        if let Some(hint) = other.mode_hint(mode) {
            eprintln!("note: --compare {}: {hint}", path.display());
        }
    }
    let (backend, note) = backend::open(args.backend, Arc::clone(&model))?;
    eprintln!("backend: {note}");
    let on_cpu = backend.name() == "cpu";
    let device = backend.device_name();
    let tokens = args.tokens.unwrap_or(if on_cpu { 4096 } else { 262_144 });
    // With --compare and no workload flags, run the compared report's workloads.
    let from_other = match &other {
        Some(other)
            if args.lengths.is_none()
                && args.tokens.is_none()
                && !args.mixed
                && args.corpus.is_none() =>
        {
            other.workloads()
        }
        _ => None,
    };
    let budgets = if args.max_batch_tokens.is_empty() {
        vec![if on_cpu { 8192 } else { 65_536 }]
    } else {
        args.max_batch_tokens.clone()
    };
    let peak_tflops = args
        .peak_tflops
        .or_else(|| device.as_deref().and_then(bench::known_peak_tflops));
    // The report's workloads are drawn with its seed (the mixed lengths): so are ours.
    let seed = match (&from_other, &other) {
        (Some(_), Some(other)) => other.seed(),
        _ => args.seed,
    };
    let options = bench::BenchOptions {
        repeats: args.repeats,
        warmup: args.warmup,
        dimensions: args.dimensions.unwrap_or(model.config.embedding_dim),
        seed,
        inputs_per_request: args.inputs_per_request,
        peak_tflops,
    };
    let (workloads, tokens) = match from_other {
        Some(workloads) => {
            let names: Vec<&str> = workloads.iter().map(|w| w.name.as_str()).collect();
            eprintln!("workloads of the compared report: {}", names.join(", "));
            let tokens = other
                .as_ref()
                .and_then(|o| o.settings.tokens_per_run)
                .unwrap_or(tokens);
            (workloads, tokens)
        }
        None => {
            let default_lengths = match &args.corpus {
                Some(_) => Vec::new(),
                None => vec![16, 128, 512, 2048],
            };
            let lengths = args.lengths.clone().unwrap_or(default_lengths);
            let mut workloads = bench::Workload::synthetic(&lengths, args.mixed, tokens, args.seed);
            if let Some(path) = &args.corpus {
                workloads.push(corpus_workload(&args, path, &model)?);
            }
            (workloads, tokens)
        }
    };
    if workloads.is_empty() {
        bail!("nothing to run: give --lengths, --mixed and/or --corpus");
    }
    let settings = bench::Setting::sweep(&budgets, &loads);
    let backend_name = backend.name();
    let results = bench::run(backend, &model, &workloads, &settings, &options, |w| {
        let latency = w.latency.map_or(String::new(), |l| {
            format!(", p50 {:.1} ms, p99 {:.1} ms", l.p50_ms, l.p99_ms)
        });
        eprintln!(
            "{} [{}]: {:.0} tokens/s ({:.2} s median{latency})",
            w.name,
            w.setting_label(),
            w.tokens_per_s,
            w.seconds_median
        )
    })?;
    let report = bench::Report::new(
        backend_name,
        if on_cpu { "f32" } else { "bf16" },
        bench::MachineInfo::host(device),
        &model,
        bench::Settings {
            tokens_per_run: tokens,
            max_batch_tokens: budgets,
            concurrency: args.concurrency.clone(),
            rate: args.rate.clone(),
            inputs_per_request: args.inputs_per_request,
            repeats: options.repeats,
            warmup: options.warmup,
            seed: options.seed,
            dimensions: options.dimensions,
            peak_tflops,
        },
        results,
    );
    print!("{}", report.table());
    if let Some(other) = &other {
        print!("{}", bench::compare::table(&report.workloads, other));
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "gemma-embed bench: {} ({}) on {}",
            report.backend,
            report.dtype,
            report.machine.gpu.as_deref().unwrap_or(&report.machine.cpu)
        );
        bench::plot::write(path, &report.workloads, &title)?;
        eprintln!("plot: {}", path.display());
    }
    Ok(())
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArg,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    backend: BackendKind,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (the address is printed once listening).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The model name answered in `model` fields and /info [default: the --model argument].
    #[arg(long)]
    served_model_name: Option<String>,
    /// Bearer token required on every route but the health checks (/health, GET /, /ping),
    /// /metrics and the OpenAPI document (/openapi.json, /api-doc/openapi.json).
    #[arg(long, env = "GEMMA_EMBED_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Token budget of one forward batch [default: 16384 on a GPU, 8192 on the CPU].
    #[arg(long)]
    max_batch_tokens: Option<usize>,
    /// Sequence cap of one forward batch.
    #[arg(long, default_value_t = 1024)]
    max_batch_sequences: usize,
    /// Inputs per request, at most (413 beyond).
    #[arg(long, default_value_t = 2048)]
    max_client_batch_size: usize,
    /// Truncate inputs longer than max_seq_length when a request does not say `truncate`
    /// (as TEI's --auto-truncate); without it they get 422.
    #[arg(long)]
    auto_truncate: bool,
    /// Request body size in bytes, at most (413 beyond).
    #[arg(long, default_value_t = 8 << 20)]
    payload_limit: usize,
    /// Inputs admitted and not yet answered, at most (429 beyond).
    #[arg(long, default_value_t = 16384)]
    max_queued_inputs: usize,
    /// Tokens admitted and not yet answered, at most (429 beyond; until a request is tokenized
    /// each text counts one token per byte, at most max_seq_length, and a request at most this
    /// whole budget, then their real count; a request whose real count is past it gets 413).
    /// The default is 2048 inputs of 2048 tokens.
    #[arg(long, default_value_t = 1 << 22)]
    max_queued_tokens: usize,
    /// How long a thin queue waits for more inputs before a partial batch goes, in ms.
    #[arg(long, default_value_t = 2)]
    max_wait_ms: u64,
    /// Tokenization threads [default: cores - 1].
    #[arg(long)]
    tokenization_workers: Option<usize>,
    /// The named prompt (`query`, `document`, `STS`, ...) of texts whose request names none
    /// [default: the model's default_prompt_name, none for EmbeddingGemma].
    #[arg(long, conflicts_with = "default_prompt")]
    default_prompt_name: Option<String>,
    /// A prompt string prepended as it is to texts whose request names no prompt.
    #[arg(long)]
    default_prompt: Option<String>,
    /// An origin whose browser pages may call the server (CORS), e.g. `https://app.example`;
    /// repeat for more, `*` for any [default: none, no CORS headers].
    #[arg(long = "cors-allow-origin", value_name = "ORIGIN")]
    cors_allow_origins: Vec<String>,
    /// On SIGTERM/SIGINT, how long requests in flight may still take, in seconds.
    #[arg(long, default_value_t = 30.0)]
    shutdown_timeout: f64,
    /// Close a connection whose client takes longer than this to send a request's headers, or
    /// leaves it idle between requests longer than this, in seconds.
    #[arg(long, default_value_t = 30.0)]
    header_timeout: f64,
}

/// `gemma-embed serve`: load and warm up the model, then listen until SIGTERM or SIGINT.
fn serve(args: ServeArgs) -> Result<()> {
    // At most a day: longer is no timeout a client could tell apart, and a deadline past the
    // clock's range would overflow.
    const DAY: f64 = 86_400.0;
    if !(0.0..=DAY).contains(&args.shutdown_timeout) {
        bail!("--shutdown-timeout must be a number of seconds from 0 to {DAY} (a day)");
    }
    if !(args.header_timeout > 0.0 && args.header_timeout <= DAY) {
        bail!("--header-timeout must be a positive number of seconds, at most {DAY} (a day)");
    }
    if args.max_client_batch_size == 0 {
        bail!("--max-client-batch-size must be at least 1 (inputs per request)");
    }
    if args.payload_limit == 0 {
        bail!("--payload-limit must be at least 1 (bytes per request body)");
    }
    let cors = server::CorsOrigins::parse(&args.cors_allow_origins)?;
    let dir = resolve_model_dir(&args.model.model)?;
    let model = Arc::new(Model::load_dir(&dir)?);
    let mut tokenizer = Tokenizer::for_model(&model)?;
    if let Some(name) = args.default_prompt_name {
        tokenizer
            .set_default_prompt(DefaultPrompt::Named(name))
            .context("--default-prompt-name")?;
    } else if let Some(text) = args.default_prompt {
        tokenizer.set_default_prompt(DefaultPrompt::Literal(text))?;
    }
    if args.max_queued_tokens < model.config.max_seq_len {
        bail!(
            "--max-queued-tokens {} is below the model's max_seq_length {}: a longest input could \
             never be admitted",
            args.max_queued_tokens,
            model.config.max_seq_len
        );
    }
    let largest_request = args
        .max_client_batch_size
        .saturating_mul(model.config.max_seq_len);
    if largest_request > args.max_queued_tokens {
        eprintln!(
            "note: --max-queued-tokens {} is below --max-client-batch-size {} inputs of \
             max_seq_length {} tokens: a request past {} tokens gets 413",
            args.max_queued_tokens,
            args.max_client_batch_size,
            model.config.max_seq_len,
            args.max_queued_tokens
        );
    }
    let (backend, note) = backend::open(args.backend, Arc::clone(&model))?;
    eprintln!("backend: {note}");
    let on_cpu = backend.name() == "cpu";
    let device = backend.device_name();
    let engine_config = EngineConfig {
        max_batch_tokens: args
            .max_batch_tokens
            .unwrap_or(if on_cpu { 8192 } else { 16384 }),
        max_batch_sequences: args.max_batch_sequences,
        max_wait: std::time::Duration::from_millis(args.max_wait_ms),
        max_queued_inputs: args.max_queued_inputs,
        max_queued_tokens: args.max_queued_tokens,
        tokenizer_workers: args
            .tokenization_workers
            .unwrap_or(EngineConfig::default().tokenizer_workers),
    };
    let metrics = Arc::new(server::Metrics::default());
    let engine = Engine::start_observed(
        backend,
        tokenizer,
        model.config.embedding_dim,
        engine_config,
        Some(metrics.batch_observer()),
    )?;
    let config = server::ServerConfig {
        model_id: args
            .served_model_name
            .unwrap_or_else(|| args.model.model.clone()),
        max_client_batch_size: args.max_client_batch_size,
        payload_limit: args.payload_limit,
        api_key: args.api_key.filter(|k| !k.is_empty()),
        auto_truncate: args.auto_truncate,
        health_timeout: std::time::Duration::from_secs(10),
        cors,
        info: server::ServerInfo {
            model_dir: display_dir(&dir),
            model_dtype: if on_cpu { "float32" } else { "bfloat16" },
            device,
        },
    };
    drop(model);
    let state = server::AppState::new(engine, metrics, config);
    let warm_up = std::time::Instant::now();
    state.warm_up().context("warm-up")?;
    eprintln!("warmed up in {:.2} s", warm_up.elapsed().as_secs_f64());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("binding {}:{}", args.host, args.port))?;
        // Tests and scripts read this line for the port.
        eprintln!("listening on http://{}", listener.local_addr()?);
        server::serve(
            listener,
            Arc::clone(&state),
            shutdown_signal(),
            std::time::Duration::from_secs_f64(args.shutdown_timeout),
            std::time::Duration::from_secs_f64(args.header_timeout),
        )
        .await
        .context("serving")
    })?;
    // Tasks still running are dropped, their requests cancelled; a `/tokenize` or `/decode`
    // still tokenizing on a blocking thread is waited for a second at most.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    // The last reference: the engine drains what it still holds and stops its threads.
    drop(state);
    eprintln!("stopped");
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM; a second one then kills the process.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = interrupt => {}
                _ = terminate.recv() => {}
            }
        }
        Err(e) => {
            eprintln!("cannot listen for SIGTERM ({e}); only SIGINT stops the server");
            let _ = interrupt.await;
        }
    }
    // A second signal stops the process at once, as if no handler were set: the way out of a
    // shutdown that waits on work no deadline can cut short (a batch running on the device).
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `signal` with SIG_DFL installs no handler of ours; it only takes back the
        // handler tokio set for this signal, which nothing listens to any more.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
}
