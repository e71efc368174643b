//! The `elide` command-line program: benchmarks that show whether wall-clock cost tracks
//! active FLOPs, as readable tables or one flat JSON object per area.

mod bench;
mod compare;

use bench::report::Report;
use bench::timing::Plan;
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
    /// Print the CPU path the kernels use and the thread count.
    Info,
}

#[derive(Clone, Copy, ValueEnum)]
enum Area {
    /// Our sgemm against matrixmultiply, peak fraction, threads, gathered, GEMV.
    Gemm,
    /// Peak f32 FMA throughput of one core.
    Peak,
    /// Recording overhead with gradients off; backward over forward for a matmul.
    Autodiff,
    /// Mixture-of-experts against its dense twins (configs A-D of the MoE issue).
    Moe,
    /// Hierarchical classifier: the predicted branch only against every branch.
    Hier,
    /// Row skip (mixture-of-depths) around an MLP block against the block on every row.
    Skip,
    /// Early exit from a 12-block stack against running every block.
    Exit,
    /// Fused causal attention against the unfused matmul → softmax → matmul, forward and backward.
    Attention,
}

/// Keeps freed tensor buffers in the process instead of handing them back to the OS.
///
/// glibc serves allocations above 128 KiB (soon 32 MiB, adaptively) with fresh `mmap`s and
/// trims freed heap memory eagerly, so a layer that allocates its activations on every call pays
/// page faults and TLB shootdowns proportional to the bytes it touches — measured at 30–40 % of a
/// mixture-of-experts forward pass on this kind of machine, and as much on its dense twin. The
/// benchmarks measure the kernels, not the kernel's page zeroing: they raise both thresholds, as
/// any long-running program using elide should (or use a caching allocator such as mimalloc).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

fn main() {
    keep_freed_memory();
    let cli = Cli::parse();
    match cli.command {
        Command::Bench { area, json, quick } => {
            let plan = Plan::new(quick);
            let report: Report = match area {
                Area::Gemm => bench::gemm::bench_gemm(plan),
                Area::Peak => bench::gemm::bench_peak(plan),
                Area::Autodiff => bench::autodiff::bench_autodiff(plan),
                Area::Moe => bench::moe::bench_moe(plan),
                Area::Hier => bench::hier::bench_hier(plan),
                Area::Skip => bench::skip::bench_skip(plan),
                Area::Exit => bench::exit::bench_exit(plan),
                Area::Attention => bench::attention::bench_attention(plan),
            };
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
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
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
        }
        Command::Info => {
            println!(
                "isa: {} (best supported: {})",
                elide::kernels::Isa::active(),
                elide::kernels::Isa::best_supported()
            );
            println!("threads: {}", rayon::current_num_threads());
        }
    }
}
