//! The `elide` command-line program: benchmarks that show whether wall-clock cost tracks
//! active FLOPs, as readable tables or one flat JSON object per area.

mod bench;

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
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench { area, json, quick } => {
            let plan = Plan::new(quick);
            let report: Report = match area {
                Area::Gemm => bench::gemm::bench_gemm(plan),
                Area::Peak => bench::gemm::bench_peak(plan),
                Area::Autodiff => bench::autodiff::bench_autodiff(plan),
            };
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
