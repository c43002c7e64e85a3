"""Run a sweep's jobs, locally or on Ray, behind one progress view for the whole sweep.

Local: a ThreadPoolExecutor per device, as many workers as jobs that run at once there; each worker waits on
one child process. Ray: one Ray task per job (a population, or a solo run), with a fraction of a GPU.
Either way a job's members are finished when their folders hold a finished summary; anything else is
picked up by running the same sweep again (the children run with --skip_finished).
"""
import signal
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from repro import sweep_child
from repro.errors import UserError
from repro.sweep_pack import Job
from repro.sweep_spec import REPO
from repro.sweep_table import is_finished

POLL_S = 1.0


class Progress:
    """One bar for the sweep: members finished of all, with those running and left, and an ETA. Counts
    members, not jobs: a population job trains many."""

    def __init__(self, total: int, finished: int, sweep_dir, enabled: bool = True):
        from tqdm.auto import tqdm

        self.sweep_dir, self.running, self.failed = sweep_dir, 0, 0
        self.bar = tqdm(total=total, initial=finished, desc="members", unit="member", disable=not enabled,
                        dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
        self._show()

    def job_done(self, job: Job) -> None:
        finished = sum(is_finished(self.sweep_dir / m.name) for m in job.members)
        self.failed += len(job.members) - finished
        self.bar.update(finished)

    def set_running(self, running: int) -> None:
        """`running`: members in the jobs running now."""
        if running != self.running:
            self.running = running
            self._show()

    def _show(self) -> None:
        left = self.bar.total - self.bar.n - self.failed - self.running
        self.bar.set_postfix(running=self.running, left=left, failed=self.failed, refresh=True)

    def close(self) -> None:
        self.bar.close()


class _LocalChildren:
    """The children running now, so that Ctrl-C reaches each and no new one starts after it."""

    def __init__(self):
        self.lock = threading.Lock()
        self.procs = {}  # process -> its job
        self.stopping = False

    def run(self, job: Job) -> int | None:
        with self.lock:
            if self.stopping:
                return None
            proc = sweep_child.start_child(job.command, str(job.log), str(REPO))
            self.procs[proc] = job
        try:
            return proc.wait()
        finally:
            with self.lock:
                self.procs.pop(proc, None)

    def running_members(self) -> int:
        with self.lock:
            return sum(len(job.members) for job in self.procs.values())

    def interrupt(self) -> None:
        with self.lock:
            self.stopping = True
            procs = list(self.procs)
        for proc in procs:  # a terminal's Ctrl-C reached them already; a `kill -INT` of the runner did not
            proc.send_signal(signal.SIGINT)


def run_local(jobs: list[Job], slots_per_device: dict[str, int], progress: Progress) -> bool:
    """Run every job; True when interrupted (Ctrl-C or SIGTERM), after the running children have saved."""
    children = _LocalChildren()
    executors = {d: ThreadPoolExecutor(max_workers=n, thread_name_prefix=f"sweep-{d}")
                 for d, n in slots_per_device.items()}
    futures = {executors[job.device].submit(children.run, job): job for job in jobs}
    pending = set(futures)
    interrupted = False
    try:
        while pending:
            done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()
                progress.job_done(futures[future])
            progress.set_running(children.running_members())
    except KeyboardInterrupt:
        interrupted = True
        children.interrupt()
    finally:
        for executor in executors.values():
            executor.shutdown(wait=True, cancel_futures=True)
    return interrupted


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--backend ray needs the ray package: pip install -r requirements-ray.txt") from None
    return ray


def connect_ray(address: str | None) -> bool:
    """Join the cluster at `address` (None: start a local one) unless connected; True if this call connected."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    if threading.current_thread() is threading.main_thread():  # ray.init leaves Ctrl-C ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return True


def run_ray(jobs: list[Job], gpus_per_job: float, progress: Progress) -> bool:
    """One Ray task per job on the connected cluster (connect_ray); True when interrupted. The results
    folder must be the same path on every node."""
    ray = import_ray()
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sweep_child)  # workers need not import the repository
    task = ray.remote(sweep_child.run_child).options(num_cpus=1, num_gpus=gpus_per_job, max_retries=0)
    refs = {task.remote(job.command, str(job.log), str(REPO)): job for job in jobs}
    pending = list(refs)
    interrupted = False
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
            for ref in done:
                _ray_result(ray, ref)
                progress.job_done(refs[ref])
            # Ray does not say which have started: these are in flight
            progress.set_running(sum(len(refs[ref].members) for ref in pending))
    except KeyboardInterrupt:
        interrupted = True
        for ref in pending:  # a running task gets KeyboardInterrupt: run_child passes SIGINT on and waits
            ray.cancel(ref)
        for ref in pending:
            _ray_result(ray, ref)
    return interrupted


def _ray_result(ray, ref) -> int | None:
    """A task's exit status; None when it was cancelled or its worker died (the member is then not finished)."""
    try:
        return ray.get(ref)
    except (ray.exceptions.TaskCancelledError, ray.exceptions.RayTaskError, ray.exceptions.WorkerCrashedError):
        return None
