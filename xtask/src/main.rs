//! `cargo xtask`: every operational task of Lattice. This file only dispatches; each task lives in
//! the file named after it, and every external command goes through [`plan::Plan`].

mod backup;
mod bench;
mod chat;
mod ci;
mod compose;
mod deploy;
mod dev;
mod doctor;
mod env;
mod flags;
mod http;
mod image;
mod logs;
mod migrate;
mod notify;
mod plan;
mod project;
mod registry;
mod release;
mod remote;
mod restore;
mod rollback;
mod sandbox;
mod secrets;
mod settings;
mod status;
mod swarm;
mod temp;
mod watch;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use xshell::Shell;

use crate::{flags::Task, plan::Plan, project::Project};

fn main() -> ExitCode {
    let flags = flags::Xtask::parse();
    match run(flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(flags: flags::Xtask) -> Result<()> {
    let sh = Shell::new()?;
    let project = Project::load()?;
    sh.change_dir(&project.root);
    // Deploy, rollback and release print one line per step; every other task echoes its commands.
    let stepwise = matches!(flags.task, Task::Deploy(_) | Task::Rollback(_) | Task::Release(_));
    let plan = Plan::new(&sh, flags.dry_run).verbose(flags.verbose || !stepwise);
    match flags.task {
        Task::Dev(task) => task.run(&plan, &project),
        Task::Image(task) => task.run(&plan, &project),
        Task::Deploy(task) => task.run(&plan, &project),
        Task::Release(task) => task.run(&plan, &project),
        Task::Rollback(task) => task.run(&plan, &project),
        Task::Status(task) => task.run(&plan, &project),
        Task::Backup(task) => task.run(&plan, &project),
        Task::Restore(task) => task.run(&plan, &project),
        Task::Logs(task) => task.run(&plan, &project),
        Task::Migrate(task) => task.run(&plan, &project),
        Task::Secrets(task) => task.run(&plan, &project),
        Task::Ci(task) => task.run(&plan, &project),
        Task::Doctor(task) => task.run(&plan, &project),
        Task::Chat(task) => task.run(&plan, &project),
        Task::Bench(task) => task.run(&plan, &project),
        Task::Sandbox(task) => task.run(&plan, &project),
    }
}
