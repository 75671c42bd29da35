//! Where the scheduler places tasks: a stage that computes pseudonyms goes only to
//! executors registered as trusted; every other stage goes anywhere (Ballista's "bias"
//! placement, biggest free executor first).
//!
//! Owns the scheduler's task placement (a Ballista `DistributionPolicy`). This is
//! liveness, not safety: an executor that claims to be trusted without the key still
//! fails the task (the function fails closed, [`super::keyed`]). A pseudonymising stage
//! with no trusted executor free waits. Danger: the binding copies Ballista 55's own
//! `bind_one`, so a task's partitions, attempts and vcores are counted as Ballista counts
//! them; keep it in step when Ballista is upgraded.

use std::collections::HashMap;
use std::sync::Arc;

use ballista_core::JobId;
use ballista_core::config::BallistaConfig;
use ballista_core::execution_plans::{RangeShuffleReaderExec, ShuffleReaderExec};
use ballista_core::serde::protobuf::{AvailableVcores, job_status};
use ballista_core::serde::scheduler::TaskKey;
use ballista_scheduler::cluster::{BoundTask, DistributionPolicy};
use ballista_scheduler::state::execution_graph::{TaskDescription, create_task_info};
use ballista_scheduler::state::execution_stage::RunningStage;
use ballista_scheduler::state::task_manager::JobInfoCache;
use datafusion::physical_plan::{ExecutionPlan, displayable};

use super::TRUSTED_PREFIX;
use super::keyed::PSEUDONYM_FUNCTION;

/// Pseudonymising stages to trusted executors only.
#[derive(Debug)]
pub struct TrustedPlacement;

/// Whether a stage's plan calls the pseudonym function.
pub fn needs_key(plan: &Arc<dyn ExecutionPlan>) -> bool {
    displayable(plan.as_ref())
        .indent(true)
        .to_string()
        .contains(PSEUDONYM_FUNCTION)
}

#[async_trait::async_trait]
impl DistributionPolicy for TrustedPlacement {
    async fn bind_tasks(
        &self,
        mut budgets: Vec<&mut AvailableVcores>,
        running_jobs: Arc<HashMap<JobId, JobInfoCache>>,
    ) -> datafusion::error::Result<Vec<BoundTask>> {
        let mut bound = Vec::new();
        budgets.sort_by(|a, b| Ord::cmp(&b.vcores, &a.vcores));
        for (job_id, job_info) in running_jobs.iter() {
            if !matches!(job_info.status, Some(job_status::Status::Running(_))) {
                continue;
            }
            let mut graph = job_info.execution_graph.write().await;
            let session_id = graph.session_id().to_string();
            let mut done = vec![];
            while let Some(stage) = graph.fetch_running_stage(&done) {
                done.push(stage.stage_id);
                let trusted_only = needs_key(&stage.plan);
                for budget in budgets.iter_mut() {
                    if trusted_only && !budget.executor_id.starts_with(TRUSTED_PREFIX) {
                        continue;
                    }
                    while budget.vcores > 0 {
                        match bind_one(stage, &session_id, job_id, budget) {
                            Some(t) => bound.push(t),
                            None => break,
                        }
                    }
                }
            }
        }
        Ok(bound)
    }

    fn name(&self) -> &str {
        "tre-trusted-placement"
    }
}

/// Ballista 55's `stage_has_input_collapse` (private there).
fn stage_has_input_collapse(plan_root: &Arc<dyn ExecutionPlan>) -> bool {
    fn walk(node: &Arc<dyn ExecutionPlan>) -> bool {
        if node.downcast_ref::<ShuffleReaderExec>().is_some()
            || node.downcast_ref::<RangeShuffleReaderExec>().is_some()
        {
            return false;
        }
        if node.properties().output_partitioning().partition_count() == 1 {
            return true;
        }
        match node.children().as_slice() {
            [child] => walk(child),
            _ => false,
        }
    }
    match plan_root.children().as_slice() {
        [child] => walk(child),
        _ => false,
    }
}

/// Ballista 55's `bind_one` (private there): one task of `stage` on `budget`'s executor.
fn bind_one(
    stage: &mut RunningStage,
    session_id: &str,
    job_id: &JobId,
    budget: &mut AvailableVcores,
) -> Option<BoundTask> {
    let is_collapse = stage_has_input_collapse(&stage.plan);
    let cap = stage
        .session_config
        .options()
        .extensions
        .get::<BallistaConfig>()
        .map(|bc| bc.max_partitions_per_task())
        .filter(|&n| n > 0)
        .unwrap_or(usize::MAX);
    let max_partitions = if is_collapse {
        usize::MAX
    } else {
        (budget.vcores as usize).min(cap)
    };
    let input_partition_ids = stage.pending.next_slice(max_partitions);
    if input_partition_ids.is_empty() {
        return None;
    }
    let vcores_consumed = if is_collapse {
        1
    } else {
        u32::try_from(input_partition_ids.len()).unwrap_or(u32::MAX)
    };
    let executor_id = budget.executor_id.clone();
    let task_id = stage.task_infos.len();
    let task_attempt = input_partition_ids
        .iter()
        .filter_map(|pid| stage.task_failure_numbers.get(*pid).copied())
        .max()
        .unwrap_or(0);
    let mut task_info = create_task_info(executor_id.clone(), task_id);
    task_info.global_input_partition_ids = input_partition_ids.clone();
    task_info.vcores_consumed = vcores_consumed;
    stage.task_infos.push(task_info);
    let key = TaskKey {
        job_id: job_id.clone(),
        stage_id: stage.stage_id,
        task_id,
    };
    let task = TaskDescription {
        session_id: session_id.to_string(),
        key,
        stage_attempt_num: stage.stage_attempt_num,
        task_attempt,
        global_input_partition_ids: input_partition_ids,
        vcores_consumed,
        plan: stage.plan.clone(),
        session_config: stage.session_config.clone(),
    };
    budget.vcores = budget.vcores.saturating_sub(vcores_consumed);
    Some((executor_id, task))
}
