//! The `elide` command-line program: benchmarks that show whether wall-clock cost tracks
//! active FLOPs, as readable tables or one flat JSON object per area.

mod bench;
mod compare;
mod lm_cmd;

use bench::report::Report;
use bench::timing::{Clock, Plan};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "elide", version, about = "elide: a CPU tensor engine whose wall-clock cost tracks active FLOPs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure an area and print a table (or, with --json, one flat JSON object of figures).
    Bench {
        /// What to measure.
        area: Area,
        /// Print one flat JSON object of the named figures instead of the table.
        #[arg(long)]
        json: bool,
        /// Fewer, shorter rounds: a smoke run, not a measurement.
        #[arg(long)]
        quick: bool,
        /// With `gemm`: time every register tile and KC/MC candidate instead.
        #[arg(long)]
        sweep: bool,
        /// Time with the process's CPU time instead of the wall clock: sharper single-thread
        /// comparisons on a machine busy with other programs (see docs/kernels.md).
        #[arg(long)]
        cpu_time: bool,
    },
    /// Train dense and conditional models on generated tasks with a known optimum and compare
    /// quality at equal compute and speed at equal quality.
    Compare {
        /// Print one flat JSON object of the named figures instead of the table.
        #[arg(long)]
        json: bool,
        /// A smoke run of under a minute instead of the full comparison.
        #[arg(long)]
        quick: bool,
        /// Write SVG charts (quality against training FLOPs and time, speed against quality)
        /// into this directory.
        #[arg(long, value_name = "DIR")]
        plot: Option<std::path::PathBuf>,
    },
    /// Train a transformer language model on a UTF-8 text file (byte-level).
    Train {
        /// JSON with the model (`"model"`: layers, widths, feed-forward kind per block) and
        /// training settings (`"train"`: steps, batch, seq, lr, ...).
        #[arg(long, value_name = "FILE")]
        config: std::path::PathBuf,
        /// The text to train on; its last 10 % is held out for evaluation.
        #[arg(long, value_name = "FILE")]
        data: std::path::PathBuf,
        /// The run directory: config, checkpoint and metrics are written there.
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
        /// Continue the run in --out from its checkpoint (bit-identical to not stopping).
        #[arg(long)]
        resume: bool,
    },
    /// Continue a prompt with a model trained by `elide train`.
    Generate {
        /// The run directory written by `elide train`.
        #[arg(long, value_name = "DIR")]
        checkpoint: std::path::PathBuf,
        /// The text to continue.
        #[arg(long)]
        prompt: String,
        /// How many bytes to generate.
        #[arg(long, default_value_t = 200)]
        max_new: usize,
        /// Softmax temperature; 0 picks the most probable byte (greedy).
        #[arg(long, default_value_t = 0.8)]
        temperature: f32,
        /// Nucleus sampling: keep the most probable bytes up to this mass.
        #[arg(long)]
        top_p: Option<f32>,
        /// The sampling seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Print the CPU path the kernels use and the thread count.
    Info,
}

#[derive(Clone, Copy, ValueEnum)]
enum Area {
    /// Our sgemm against matrixmultiply, peak fraction, threads, gathered, GEMV.
    Gemm,
    /// Peak f32 FMA throughput of one and two cores; streaming read bandwidth.
    Peak,
    /// Recording overhead with gradients off; backward over forward for a matmul.
    Autodiff,
    /// Mixture-of-experts (top-2, GELU experts, 4096 tokens of width 512) against dense FFNs of
    /// equal active FLOPs: 8 experts of hidden 1024, forward and forward+backward; 64 experts of
    /// hidden 256; forward time as the expert count grows from 8 to 64; decode at 1 and 8 tokens.
    Moe,
    /// Hierarchical classifier: the predicted branch only against every branch.
    Hier,
    /// Row skip (mixture-of-depths) around an MLP block against the block on every row.
    Skip,
    /// Early exit from a 12-block stack against running every block.
    Exit,
    /// Fused causal attention against the unfused matmul → softmax → matmul, forward and backward.
    Attention,
    /// Transformer LMs (6 layers, d 256): a MoE training step (top-2 of 8, equal active FLOPs)
    /// against the dense model's; decoding 256 tokens with the KV cache against recomputing
    /// the prefix; decode tokens/s of both.
    Lm,
    /// Unit-sparse feed-forward at inference against the dense layer of the same weights.
    SparseFf,
}

fn main() {
    let cli = Cli::parse();
    // A bad ELIDE_ISA is reported here, once, instead of by the first kernel that runs.
    if let Err(e) = elide::kernels::Isa::try_active() {
        eprintln!("elide: {e}");
        std::process::exit(2);
    }
    match cli.command {
        Command::Bench { area, json, quick, sweep, cpu_time } => {
            let plan = Plan::new(quick, if cpu_time { Clock::Process } else { Clock::Wall });
            bench::report::set_live(!json);
            let report: Report = match area {
                Area::Gemm if sweep => bench::sweep::bench_sweep(plan),
                Area::Gemm => bench::gemm::bench_gemm(plan),
                Area::Peak => bench::peak::bench_peak(plan),
                Area::Autodiff => bench::autodiff::bench_autodiff(plan),
                Area::Moe => bench::moe::bench_moe(plan),
                Area::Hier => bench::hier::bench_hier(plan),
                Area::Skip => bench::skip::bench_skip(plan),
                Area::Exit => bench::exit::bench_exit(plan),
                Area::Attention => bench::attention::bench_attention(plan),
                Area::Lm => bench::lm::bench_lm(plan, quick),
                Area::SparseFf => bench::sparse_ff::bench_sparse_ff(plan),
            };
            if json {
                bench::report::print_line(&report.to_json());
            } else {
                bench::report::print_line(report.to_table().trim_end_matches('\n'));
            }
        }
        Command::Compare { json, quick, plot } => {
            let outcome = compare::compare(compare::Plan { quick });
            if let Some(dir) = plot {
                if let Err(e) = compare::plot(&outcome, &dir) {
                    eprintln!("elide compare: cannot write the charts: {e}");
                    std::process::exit(1);
                }
            }
            let report = compare::report(&outcome);
            if json {
                bench::report::print_line(&report.to_json());
            } else {
                bench::report::print_line(report.to_table().trim_end_matches('\n'));
            }
        }
        Command::Train { config, data, out, resume } => {
            if let Err(e) = lm_cmd::train(&config, &data, &out, resume) {
                eprintln!("elide train: {e}");
                std::process::exit(1);
            }
        }
        Command::Generate { checkpoint, prompt, max_new, temperature, top_p, seed } => {
            let sampling = match (temperature, top_p) {
                (0.0, _) => elide::models::Sampling::Greedy,
                (t, Some(p)) => elide::models::Sampling::TopP { p, temperature: t },
                (t, None) => elide::models::Sampling::Temperature(t),
            };
            match lm_cmd::generate(&checkpoint, &prompt, max_new, sampling, seed) {
                Ok(text) => println!("{prompt}{text}"),
                Err(e) => {
                    eprintln!("elide generate: {e}");
                    std::process::exit(1);
                }
            }
        }
        Command::Info => {
            println!(
                "isa: {} (best supported: {})",
                elide::kernels::Isa::active(),
                elide::kernels::Isa::best_supported()
            );
            println!("threads: {}", rayon::current_num_threads());
            let caches = elide::kernels::CacheSizes::get();
            println!(
                "caches: L1d {} KiB, L2 {} KiB, L3 {} KiB ({})",
                caches.l1d >> 10,
                caches.l2 >> 10,
                caches.l3 >> 10,
                if caches.from_cpuid { "CPUID" } else { "not reported; typical sizes assumed" }
            );
            let isa = elide::kernels::Isa::active();
            println!("gemm blocking: {}", elide::kernels::gemm::Blocking::of(isa));
        }
    }
}
