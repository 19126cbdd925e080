"""The scheduling core, driven by plain function calls: no sockets, no processes, no sleeps."""

from __future__ import annotations

import math

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from batchcrew.scheduling import (
    Abandon,
    Alarm,
    Assign,
    Broken,
    Cause,
    Complete,
    Decision,
    End,
    Fail,
    Interrupt,
    Keep,
    Launch,
    Retire,
    Scheduler,
    Settings,
    Stop,
    plan_launches,
)


def of(kind: type, decisions: list[Decision] | None) -> list:
    assert decisions is not None
    return [decision for decision in decisions if isinstance(decision, kind)]


def launched(decisions: list[Decision] | None) -> list[bytes]:
    return [identity for launch in of(Launch, decisions) for identity in launch.identities]


def start_worker(scheduler: Scheduler, now: float = 0.0) -> tuple[bytes, list[Decision]]:
    """Push nothing; take the next launched identity from a fresh launch and connect it."""
    decisions = scheduler.push(99_000 + scheduler.unresolved, now)
    identity = launched(decisions)[0]
    return identity, scheduler.connected_worker(identity, now) or []


# -- workers_min -----------------------------------------------------------------------------


def test_warm_workers_launch_at_start_stay_idle_and_come_back_when_lost() -> None:
    scheduler = Scheduler(Settings(workers=3, workers_min=2))
    warm = launched(scheduler.start(0.0))
    assert len(warm) == 2  # with no task pushed
    for identity in warm:
        assert scheduler.connected_worker(identity, 0.0) == []
    assert scheduler.start(0.0) == []  # the floor holds: nothing more
    assert of(Keep, scheduler.idle(warm[0])) == [Keep(warm[0])]
    # A third worker, for tasks, may leave once idle: the two stay.
    extra = [identity for task in range(3) for identity in launched(scheduler.push(task, 1.0))]
    assert len(extra) == 1
    (third,) = extra
    scheduler.connected_worker(third, 1.0)
    for identity in (*warm, third):
        (task,) = scheduler._workers[identity].assigned
        scheduler.result(identity, task, 0.1, 2.0)
    assert scheduler.unresolved == 0
    stops = of(Stop, scheduler.idle(third))
    assert [stop.worker for stop in stops] == [third]
    assert of(Keep, scheduler.idle(warm[1])) == [Keep(warm[1])]  # 2 left: the floor
    scheduler.lost(third, 3.0, clean=True, reason="idle")
    assert launched(scheduler.tick(3.0)) == []  # at the floor: nothing to replace
    # A warm worker lost is replaced at once.
    assert len(launched(scheduler.lost(warm[0], 4.0, clean=False, reason="killed"))) == 1


def test_an_idle_worker_with_a_task_just_sent_neither_stays_nor_goes() -> None:
    scheduler = Scheduler(Settings(workers=2, workers_min=1))
    (identity,) = launched(scheduler.start(0.0))
    scheduler.connected_worker(identity, 0.0)
    assert of(Assign, scheduler.push(1, 1.0)) == [Assign(identity, 1)]
    assert scheduler.idle(identity) == []


# -- plan_launches ---------------------------------------------------------------------------


def test_plan_launches_fills_demand_up_to_the_cap() -> None:
    assert plan_launches(4, {0: 10}, {}) == {0: 4}
    assert plan_launches(4, {0: 2}, {}) == {0: 2}
    assert plan_launches(4, {0: 10}, {0: 3}) == {0: 1}
    assert plan_launches(4, {0: 1}, {0: 3}) == {}


def test_plan_launches_lets_bigger_workers_cover_smaller_tasks() -> None:
    assert plan_launches(4, {0: 2}, {1: 2}) == {}
    assert plan_launches(4, {0: 3, 1: 1}, {1: 2}) == {0: 2}


def test_plan_launches_puts_higher_levels_first_when_the_cap_binds() -> None:
    assert plan_launches(2, {0: 5, 1: 1}, {}) == {1: 1, 0: 1}
    assert plan_launches(1, {0: 5, 1: 1}, {}) == {1: 1}


def test_plan_launches_without_a_cap() -> None:
    assert plan_launches(math.inf, {0: 5}, {0: 1}) == {0: 4}


# -- the life of a task ----------------------------------------------------------------------


def test_a_push_launches_a_worker_and_its_hello_gets_the_task() -> None:
    scheduler = Scheduler(Settings(workers=2))
    decisions = scheduler.push(1, 0.0)
    (launch,) = of(Launch, decisions)
    assert launch.level == 0
    assert len(launch.identities) == 1
    assert scheduler.launching == 1
    decisions = scheduler.connected_worker(launch.identities[0], 0.1)
    assert of(Assign, decisions) == [Assign(launch.identities[0], 1)]
    decisions = scheduler.result(launch.identities[0], 1, 0.5, 0.2)
    assert of(Complete, decisions) == [Complete(1, launch.identities[0])]
    assert scheduler.unresolved == 0


def test_demand_is_the_smaller_of_workers_and_unresolved_tasks() -> None:
    scheduler = Scheduler(Settings(workers=3))
    identities: list[bytes] = []
    for task in range(10):
        identities += launched(scheduler.push(task, 0.0))
    assert len(identities) == 3
    scheduler2 = Scheduler(Settings(workers=3))
    assert len(launched(scheduler2.push(1, 0.0))) == 1
    assert len(launched(scheduler2.push(2, 0.0))) == 1


def test_a_result_that_is_not_the_workers_current_task_is_dropped() -> None:
    scheduler = Scheduler(Settings(workers=1))
    identity = launched(scheduler.push(1, 0.0))[0]
    scheduler.connected_worker(identity, 0.0)
    assert scheduler.result(identity, 2, 0.1, 0.0) is None  # never assigned
    assert scheduler.result(b"stranger:0", 1, 0.1, 0.0) is None  # unknown peer
    assert scheduler.connected_worker(b"stranger:0", 0.0) is None
    assert of(Complete, scheduler.result(identity, 1, 0.1, 0.0)) == [Complete(1, identity)]
    assert scheduler.result(identity, 1, 0.1, 0.0) is None  # a replay


def test_a_second_hello_from_a_connected_worker_is_dropped() -> None:
    scheduler = Scheduler(Settings(workers=1))
    identity = launched(scheduler.push(1, 0.0))[0]
    assert scheduler.connected_worker(identity, 0.0) is not None
    assert scheduler.connected_worker(identity, 0.0) is None


# -- crashes and retries ---------------------------------------------------------------------


def test_a_crash_requeues_the_task_at_the_front_until_crashes_max() -> None:
    scheduler = Scheduler(Settings(workers=1, crashes_max=1))
    first = launched(scheduler.push(1, 0.0))[0]
    scheduler.push(2, 0.0)
    scheduler.connected_worker(first, 0.0)
    decisions = scheduler.lost(first, 1.0, clean=False, reason="killed")
    assert not of(Fail, decisions)
    (second,) = launched(decisions)
    # The crashed task goes out first, ahead of task 2.
    assert of(Assign, scheduler.connected_worker(second, 1.0)) == [Assign(second, 1)]
    decisions = scheduler.lost(second, 2.0, clean=False, reason="killed again")
    (fail,) = of(Fail, decisions)
    assert fail.task == 1
    assert fail.status == "crash"
    assert "2 time(s)" in fail.message
    assert "killed again" in fail.message
    assert "crashes_max=1" in fail.message
    assert scheduler.unresolved_tasks() == [2]


def test_a_task_after_a_crashed_one_starts_with_no_crash_or_level_of_its_own() -> None:
    # A completed task's record is kept for the next task taken: it must start afresh.
    scheduler = Scheduler(Settings(workers=1, levels=2, crashes_max=2))
    first = launched(scheduler.push(1, 0.0))[0]
    scheduler.connected_worker(first, 0.0)
    (bigger,) = launched(scheduler.lost(first, 1.0, clean=False, reason="killed"))
    assert of(Assign, scheduler.connected_worker(bigger, 1.0)) == [Assign(bigger, 1)]
    assert of(Complete, scheduler.result(bigger, 1, 0.1, 2.0)) == [Complete(1, bigger, 1)]
    assert of(Assign, scheduler.push(2, 2.0)) == [Assign(bigger, 2)]
    assert of(Complete, scheduler.result(bigger, 2, 0.1, 3.0)) == [Complete(2, bigger, 0)]


def test_crashes_max_zero_resolves_the_first_crash() -> None:
    scheduler = Scheduler(Settings(workers=1, crashes_max=0))
    identity = launched(scheduler.push(1, 0.0))[0]
    scheduler.connected_worker(identity, 0.0)
    (fail,) = of(Fail, scheduler.lost(identity, 1.0, clean=False, reason="OOM"))
    assert fail.status == "crash"


def test_a_loss_by_the_infrastructure_requeues_at_the_same_level_without_a_crash() -> None:
    # crashes_max=0: one crash would resolve the task; a reclaimed host is not a crash.
    scheduler = Scheduler(Settings(workers=1, levels=3, crashes_max=0, interruptions_max=2))
    first = launched(scheduler.push(1, 0.0))[0]
    scheduler.connected_worker(first, 0.0)
    decisions = scheduler.lost(
        first, 1.0, clean=False, reason="Host EC2 terminated", cause="infrastructure"
    )
    assert not of(Fail, decisions)
    (launch,) = of(Launch, decisions)
    assert launch.level == 0  # no climb up the resource ladder
    (second,) = launch.identities
    assert of(Assign, scheduler.connected_worker(second, 1.0)) == [Assign(second, 1)]
    assert of(Complete, scheduler.result(second, 1, 0.1, 2.0)) == [Complete(1, second, 0, 1)]


def test_interruptions_max_resolves_the_task_as_a_crash_naming_the_budget() -> None:
    scheduler = Scheduler(Settings(workers=1, crashes_max=5, interruptions_max=1))
    identity = launched(scheduler.push(1, 0.0))[0]
    for attempt in range(2):
        scheduler.connected_worker(identity, float(attempt))
        decisions = scheduler.lost(
            identity, attempt + 0.5, clean=False, reason="reclaimed", cause="infrastructure"
        )
        if attempt == 0:
            identity = launched(decisions)[0]
    (fail,) = of(Fail, decisions)
    assert fail.status == "crash"  # what moves a task to its controller's backup
    assert "lost 2 time(s) by no doing of its own" in fail.message
    assert "interruptions_max=1" in fail.message


def test_workers_that_ran_but_never_connected_break_the_run_at_once() -> None:
    scheduler = Scheduler(Settings(workers=2, seconds_launch=10.0, launch_failures_max=5))
    first, second = launched(scheduler.push_many([1, 2], 0.0))
    scheduler.pending(first, "its job is RUNNABLE: no capacity", running=False)
    scheduler.pending(second, "its jobs ran but none connected: check the network", running=True)
    decisions = scheduler.tick(10.0)
    (broken,) = of(Broken, decisions)
    assert broken.hopeless
    assert "check the network" in broken.reason
    assert not of(Launch, decisions)  # no more jobs billed dialling a controller out of reach


def test_a_launch_still_queued_says_why_and_is_replaced() -> None:
    scheduler = Scheduler(Settings(workers=1, seconds_launch=10.0))
    (identity,) = launched(scheduler.push(1, 0.0))
    scheduler.pending(identity, "its job is RUNNABLE: CE disabled", running=False)
    decisions = scheduler.tick(10.0)
    (abandon,) = of(Abandon, decisions)
    assert abandon.reason.endswith("its job is RUNNABLE: CE disabled")
    assert not of(Broken, decisions)
    assert len(launched(decisions)) == 1  # capacity may come: try again


def test_workers_that_ran_late_after_others_connected_are_an_ordinary_failure() -> None:
    scheduler = Scheduler(Settings(workers=2, seconds_launch=10.0))
    first = launched(scheduler.push(1, 0.0))[0]
    scheduler.connected_worker(first, 0.0)
    (second,) = launched(scheduler.push(2, 1.0))
    scheduler.pending(second, "ran but did not connect", running=True)
    decisions = scheduler.tick(11.0)
    assert not of(Broken, decisions)  # the network works: one slow worker is no proof


def test_a_goodbye_requeues_unstarted_tasks_without_counting_a_crash() -> None:
    scheduler = Scheduler(Settings(workers=1, crashes_max=0))
    identity = launched(scheduler.push(1, 0.0))[0]
    scheduler.connected_worker(identity, 0.0)
    decisions = scheduler.lost(identity, 1.0, clean=True, reason="idle")
    assert not of(Fail, decisions)
    assert scheduler.unresolved_tasks() == [1]
    assert len(launched(decisions)) == 1


def test_only_the_running_task_of_a_pipelined_worker_counts_a_crash() -> None:
    scheduler = Scheduler(Settings(workers=1, crashes_max=0, pipeline=3))
    identity = launched(scheduler.push(1, 0.0))[0]
    scheduler.connected_worker(identity, 0.0)
    scheduler.result(identity, 1, 0.0001, 0.0)  # short tasks: pipelining starts
    for task in (2, 3, 4):
        scheduler.push(task, 0.0)
    decisions = scheduler.lost(identity, 1.0, clean=False, reason="killed")
    assert [fail.task for fail in of(Fail, decisions)] == [2]
    assert sorted(scheduler.unresolved_tasks()) == [3, 4]


def test_a_worker_whose_connection_closed_gets_no_task_while_its_exit_report_comes() -> None:
    # A local worker's connection closes a moment before its exit report: a task pushed in
    # between waits for another worker, and counts no crash when the first is lost.
    scheduler = Scheduler(Settings(workers=2, crashes_max=0))
    gone, _ = start_worker(scheduler)
    scheduler.result(gone, 99_000, 0.5, 0.0)  # its task done: idle
    scheduler.cut(gone)
    assert not of(Assign, scheduler.push(1, 0.1))
    decisions = scheduler.lost(gone, 0.2, clean=False, reason="killed by SIGKILL")
    assert not of(Fail, decisions)
    (other,) = launched(decisions)
    assert of(Assign, scheduler.connected_worker(other, 0.3)) == [Assign(other, 1)]


def test_a_crashed_task_escalates_and_other_tasks_stay_at_the_first_level() -> None:
    scheduler = Scheduler(Settings(workers=4, levels=3, crashes_max=5))
    small = launched(scheduler.push(1, 0.0))[0]
    scheduler.connected_worker(small, 0.0)
    decisions = scheduler.lost(small, 1.0, clean=False, reason="OOM")
    (launch,) = of(Launch, decisions)
    assert launch.level == 1
    big = launch.identities[0]
    assert of(Assign, scheduler.connected_worker(big, 1.0)) == [Assign(big, 1)]
    # A new task meanwhile launches a first-level worker, not a big one.
    (launch,) = of(Launch, scheduler.push(2, 1.0))
    assert launch.level == 0
    # A second crash goes one level further; the last level holds after that.
    (launch,) = of(Launch, scheduler.lost(big, 2.0, clean=False, reason="OOM"))
    assert launch.level == 2
    biggest = launch.identities[0]
    scheduler.connected_worker(biggest, 2.0)
    (launch,) = of(Launch, scheduler.lost(biggest, 3.0, clean=False, reason="OOM"))
    assert launch.level == 2


def test_a_small_worker_never_gets_an_escalated_task_but_a_big_one_takes_small_tasks() -> None:
    scheduler = Scheduler(Settings(workers=2, levels=2))
    first = launched(scheduler.push(1, 0.0))[0]
    scheduler.connected_worker(first, 0.0)
    (big,) = launched(scheduler.lost(first, 1.0, clean=False, reason="OOM"))
    scheduler.connected_worker(big, 1.0)
    scheduler.result(big, 1, 1.0, 2.0)
    assert of(Assign, scheduler.push(2, 2.0)) == [Assign(big, 2)]


def test_an_escalated_task_takes_the_slot_its_crashed_worker_freed() -> None:
    scheduler = Scheduler(Settings(workers=2, levels=2))
    a = launched(scheduler.push(1, 0.0))[0]
    b = launched(scheduler.push(2, 0.0))[0]
    scheduler.push(3, 0.0)
    scheduler.connected_worker(a, 0.0)
    scheduler.connected_worker(b, 0.0)
    decisions = scheduler.lost(a, 1.0, clean=False, reason="OOM")
    # Tasks 1 (escalated) and 3 both want a worker; the one free slot goes to level 1.
    assert [launch.level for launch in of(Launch, decisions)] == [1]


# -- launches that fail ----------------------------------------------------------------------


def test_a_launch_that_never_connects_is_abandoned_and_replaced() -> None:
    scheduler = Scheduler(Settings(workers=1, seconds_launch=10.0))
    identity = launched(scheduler.push(1, 0.0))[0]
    assert scheduler.next_deadline() == 10.0
    assert scheduler.tick(5.0) == []
    decisions = scheduler.tick(10.0)
    (abandon,) = of(Abandon, decisions)
    assert abandon.identities == (identity,)
    assert "seconds_launch=10" in abandon.reason
    assert of(Retire, decisions)
    assert len(launched(decisions)) == 1
    assert not scheduler.knows(identity)


def test_consecutive_failed_launches_break_the_scheduler_once() -> None:
    scheduler = Scheduler(Settings(workers=1, launch_failures_max=3))
    launch = of(Launch, scheduler.push(1, 0.0))[0]
    brokens: list[Broken] = []
    for attempt in range(3):
        decisions = scheduler.launch_failed(launch.launch, float(attempt), "no such queue")
        brokens += of(Broken, decisions)
        launches = of(Launch, decisions)
        if launches:
            launch = launches[0]
    assert len(brokens) == 1
    assert brokens[0].failures == 3
    assert "no such queue" in brokens[0].reason
    assert scheduler.broken is not None
    assert not of(Launch, scheduler.push(2, 5.0))  # no more launching


def test_a_worker_that_exits_before_connecting_is_a_failed_launch() -> None:
    scheduler = Scheduler(Settings(workers=1, launch_failures_max=2))
    identity = launched(scheduler.push(1, 0.0))[0]
    decisions = scheduler.lost(identity, 0.1, clean=False, reason="exit code 1")
    identity = launched(decisions)[0]
    decisions = scheduler.lost(identity, 0.2, clean=False, reason="exit code 1")
    assert of(Broken, decisions)


def test_a_connect_resets_the_failure_count() -> None:
    scheduler = Scheduler(Settings(workers=1, launch_failures_max=2))
    launch = of(Launch, scheduler.push(1, 0.0))[0]
    launch = of(Launch, scheduler.launch_failed(launch.launch, 0.0, "flaky"))[0]
    scheduler.connected_worker(launch.identities[0], 0.0)
    scheduler.lost(launch.identities[0], 1.0, clean=False, reason="killed")
    launch = next(
        launch
        for launch in scheduler._launches.values()  # the replacement launch
    )
    assert not of(Broken, scheduler.launch_failed(launch.id, 1.0, "flaky"))


# -- cancel, tasks_max, pipelining, close ----------------------------------------------------


def test_cancel_resolves_a_queued_task_and_drops_a_running_ones_result() -> None:
    scheduler = Scheduler(Settings(workers=1))
    identity = launched(scheduler.push(1, 0.0))[0]
    scheduler.push(2, 0.0)
    scheduler.connected_worker(identity, 0.0)
    assert scheduler.cancel(2, 0.0) == [Fail(2, "cancel", "cancelled", None)]
    decisions = scheduler.cancel(1, 0.0)
    assert of(Fail, decisions) == [Fail(1, "cancel", "cancelled", identity)]
    assert of(Interrupt, decisions) == [Interrupt(identity, 1, "cancelled")]
    assert scheduler.cancel(1, 0.0) == []
    decisions = scheduler.result(identity, 1, 0.1, 0.0)
    assert decisions is not None
    assert not of(Complete, decisions)
    assert not of(End, scheduler.tick(100.0))  # it reported in time: nothing to end


def test_a_worker_that_does_not_report_its_cancelled_task_is_ended() -> None:
    scheduler = Scheduler(Settings(workers=1, seconds_interrupt=5.0))
    identity = launched(scheduler.push(1, 0.0))[0]
    scheduler.push(2, 0.0)
    scheduler.connected_worker(identity, 0.0)
    decisions = scheduler.cancel(1, 10.0)
    (alarm,) = of(Alarm, decisions)
    assert alarm.at > 15.0
    assert scheduler.next_deadline() == alarm.at
    assert not scheduler.tick(alarm.at - 0.01)
    decisions = scheduler.tick(alarm.at)
    (end,) = of(End, decisions)
    assert end.worker == identity
    assert "seconds_interrupt=5" in end.reason
    assert not of(Fail, decisions)  # the cancelled task resolved already; none other fails
    assert not scheduler.knows(identity)
    assert launched(decisions)  # task 2 is still wanted: a replacement launches
    assert scheduler.unresolved == 1


def test_a_cancelled_task_sent_ahead_is_interrupted_and_timed_once_it_runs() -> None:
    scheduler = Scheduler(Settings(workers=1, pipeline=4))
    identity = launched(scheduler.push(1, 0.0))[0]
    scheduler.connected_worker(identity, 0.0)
    scheduler.result(identity, 1, 0.0001, 0.0)  # short tasks: the worker gets several
    for task in (2, 3):
        scheduler.push(task, 0.0)
    decisions = scheduler.cancel(3, 1.0)
    assert of(Interrupt, decisions) == [Interrupt(identity, 3, "cancelled")]
    assert not of(Alarm, decisions)  # not running yet: no clock
    assert of(Alarm, scheduler.result(identity, 2, 0.0001, 2.0))  # now it is the one running


def test_a_timed_out_task_whose_worker_stays_silent_resolves_as_a_timeout() -> None:
    scheduler = Scheduler(Settings(workers=1, seconds_interrupt=2.0))
    identity = launched(scheduler.push(1, 0.0, timeout=3.0))[0]
    decisions = scheduler.connected_worker(identity, 10.0)
    (alarm,) = of(Alarm, decisions)
    assert alarm.at >= 10.0 + 3.0 + 2.0
    decisions = scheduler.tick(alarm.at)
    (fail,) = of(Fail, decisions)
    assert fail.status == "error"
    assert fail.message.startswith("TimeoutError")
    assert "seconds_timeout=3" in fail.message
    assert of(End, decisions)
    assert scheduler.unresolved == 0
    assert scheduler.result(identity, 1, 5.0, alarm.at + 1) is None  # too late: dropped


def test_a_timed_out_task_reported_in_time_resolves_from_its_report() -> None:
    scheduler = Scheduler(Settings(workers=1, seconds_interrupt=2.0))
    identity = launched(scheduler.push(1, 0.0, timeout=3.0))[0]
    scheduler.connected_worker(identity, 0.0)
    assert of(Complete, scheduler.result(identity, 1, 3.0, 3.1)) == [Complete(1, identity)]
    assert not scheduler.tick(100.0)


def test_a_worker_lost_past_its_tasks_timeout_resolves_it_as_a_timeout_not_a_crash() -> None:
    scheduler = Scheduler(Settings(workers=1, crashes_max=5))
    identity = launched(scheduler.push(1, 0.0, timeout=3.0))[0]
    scheduler.connected_worker(identity, 0.0)
    decisions = scheduler.lost(identity, 4.0, clean=False, reason="killed by signal 9")
    (fail,) = of(Fail, decisions)
    assert fail.status == "error"
    assert fail.message.startswith("TimeoutError")
    assert not launched(decisions)  # nothing is retried
    early = Scheduler(Settings(workers=1, crashes_max=5))
    identity = launched(early.push(1, 0.0, timeout=3.0))[0]
    early.connected_worker(identity, 0.0)
    assert not of(Fail, early.lost(identity, 1.0, clean=False, reason="killed"))  # a crash


def test_a_goodbye_that_asks_to_be_ended_is_ended() -> None:
    scheduler = Scheduler(Settings(workers=1))
    identity = launched(scheduler.push(1, 0.0))[0]
    scheduler.connected_worker(identity, 0.0)
    scheduler.cancel(1, 0.0)
    decisions = scheduler.lost(identity, 1.0, clean=True, reason="stuck", end=True)
    assert of(End, decisions) == [End(identity, "stuck")]


def test_a_worker_dying_on_a_cancelled_task_retries_nothing() -> None:
    scheduler = Scheduler(Settings(workers=1))
    identity = launched(scheduler.push(1, 0.0))[0]
    scheduler.connected_worker(identity, 0.0)
    scheduler.cancel(1, 0.0)
    decisions = scheduler.lost(identity, 1.0, clean=False, reason="killed")
    assert not of(Fail, decisions)
    assert not of(Launch, decisions)
    assert scheduler.unresolved == 0


def test_tasks_max_bounds_what_a_worker_is_sent() -> None:
    scheduler = Scheduler(Settings(workers=1, tasks_max=2, pipeline=4))
    identity = launched(scheduler.push(1, 0.0))[0]
    for task in (2, 3, 4):
        scheduler.push(task, 0.0)
    scheduler.connected_worker(identity, 0.0)
    decisions = scheduler.result(identity, 1, 0.0001, 0.0)
    assert of(Assign, decisions) == [Assign(identity, 2)]
    assert not of(Assign, scheduler.result(identity, 2, 0.0001, 0.0))


def test_pipelining_starts_only_once_tasks_are_known_to_be_short() -> None:
    scheduler = Scheduler(Settings(workers=1, pipeline=3, seconds_short=0.01))
    identity = launched(scheduler.push(1, 0.0))[0]
    for task in range(2, 10):
        scheduler.push(task, 0.0)
    assert of(Assign, scheduler.connected_worker(identity, 0.0)) == [Assign(identity, 1)]
    assert len(of(Assign, scheduler.result(identity, 1, 0.001, 0.0))) == 3
    slow = Scheduler(Settings(workers=1, pipeline=3, seconds_short=0.01))
    identity = launched(slow.push(1, 0.0))[0]
    for task in range(2, 10):
        slow.push(task, 0.0)
    slow.connected_worker(identity, 0.0)
    assert len(of(Assign, slow.result(identity, 1, 1.0, 0.0))) == 1


def test_idle_workers_get_a_task_before_any_worker_gets_a_second() -> None:
    scheduler = Scheduler(Settings(workers=2, pipeline=4))
    a = launched(scheduler.push(1, 0.0))[0]
    b = launched(scheduler.push(2, 0.0))[0]
    scheduler.connected_worker(a, 0.0)
    scheduler.connected_worker(b, 0.0)
    scheduler.result(a, 1, 0.0001, 0.0)
    scheduler.result(b, 2, 0.0001, 0.0)  # both idle; tasks are known to be short
    first = of(Assign, scheduler.push(3, 0.0))
    second = of(Assign, scheduler.push(4, 0.0))
    assert {first[0].worker, second[0].worker} == {a, b}
    assert len(of(Assign, scheduler.push(5, 0.0))) == 1  # now a second one, pipelined


def test_close_stops_connected_workers_and_launches_nothing_more() -> None:
    scheduler = Scheduler(Settings(workers=2))
    a = launched(scheduler.push(1, 0.0))[0]
    scheduler.connected_worker(a, 0.0)
    stops = of(Stop, scheduler.close())
    assert [stop.worker for stop in stops] == [a]
    assert not of(Launch, scheduler.push(2, 0.0))


# -- invariants under any order of events ----------------------------------------------------


class SchedulerMachine(RuleBasedStateMachine):
    """Random pushes, connects, results, connections closing, clean and unclean losses,
    cancels, launch failures, clock ticks and close, at 1 to 3 levels; after every step the
    scheduler's decisions are checked against a plain model of what must hold."""

    def __init__(self) -> None:
        super().__init__()
        self.scheduler: Scheduler | None = None
        self.now = 0.0
        self.pushed = 0
        self.resolved: list[int] = []
        self.crashes: dict[int, int] = {}
        self.interruptions: dict[int, int] = {}
        self.live: dict[bytes, int] = {}  # launched and not written off: identity -> level
        self.launches: dict[str, list[bytes]] = {}
        self.waiting: list[bytes] = []  # launched, not connected
        self.running: dict[bytes, list[int]] = {}  # connected: tasks sent, oldest first
        self.sent: dict[bytes, int] = {}
        self.cut: set[bytes] = set()  # connections closed, exit reports awaited
        self.closed = False

    @initialize(
        workers=st.integers(1, 5),
        levels=st.integers(1, 3),
        crashes_max=st.integers(0, 2),
        interruptions_max=st.integers(0, 2),
        tasks_max=st.sampled_from([math.inf, 1, 3]),
        pipeline=st.integers(1, 4),
    )
    def start(
        self,
        workers: int,
        levels: int,
        crashes_max: int,
        interruptions_max: int,
        tasks_max: float,
        pipeline: int,
    ) -> None:
        self.settings = Settings(
            workers=workers,
            levels=levels,
            crashes_max=crashes_max,
            interruptions_max=interruptions_max,
            tasks_max=tasks_max,
            pipeline=pipeline,
            seconds_launch=5.0,
            seconds_interrupt=1.0,
        )
        self.scheduler = Scheduler(self.settings)

    @property
    def s(self) -> Scheduler:
        assert self.scheduler is not None
        return self.scheduler

    def level_of(self, task: int) -> int:
        return min(self.crashes.get(task, 0), self.settings.levels - 1)

    def apply(self, decisions: list[Decision] | None) -> None:
        for decision in decisions or []:
            if isinstance(decision, Launch):
                assert not self.closed, "launched after close"
                self.launches[decision.launch] = list(decision.identities)
                for identity in decision.identities:
                    self.live[identity] = decision.level
                    self.waiting.append(identity)
            elif isinstance(decision, Assign):
                assert not self.closed, "assigned after close"
                worker = decision.worker
                assert worker in self.running, "assigned to a worker that is not connected"
                assert worker not in self.cut, "assigned to a worker whose connection closed"
                assert self.level_of(decision.task) <= self.live[worker], "worker too small"
                self.running[worker].append(decision.task)
                self.sent[worker] += 1
                assert len(self.running[worker]) <= self.settings.pipeline, "past its depth"
                assert self.sent[worker] <= self.settings.tasks_max, "past tasks_max"
            elif isinstance(decision, Complete | Fail):
                assert decision.task not in self.resolved, "resolved twice"
                self.resolved.append(decision.task)
                if isinstance(decision, Complete):
                    assert decision.crashes == self.crashes.get(decision.task, 0), "crash count"
                    assert decision.interruptions == self.interruptions.get(decision.task, 0), (
                        "interruption count"
                    )
            elif isinstance(decision, Abandon):
                for identity in decision.identities:
                    self.forget(identity)
            elif isinstance(decision, End):
                self.forget(decision.worker)
            elif isinstance(decision, Interrupt):
                assert decision.task in self.running.get(decision.worker, []), "not held there"
        assert len(self.live) <= self.settings.workers, "over the workers cap"
        assert self.s.unresolved + len(self.resolved) == self.pushed
        assert self.s.connected == len(self.running)
        assert self.s.launching == len(self.waiting)

    def forget(self, identity: bytes) -> None:
        self.cut.discard(identity)
        self.live.pop(identity, None)
        self.running.pop(identity, None)
        if identity in self.waiting:
            self.waiting.remove(identity)

    @rule(count=st.integers(1, 4), timed=st.booleans())
    def push(self, count: int, timed: bool) -> None:
        tasks = range(self.pushed + 1, self.pushed + count + 1)
        self.pushed += count
        self.apply(self.s.push_many(tasks, self.now, 2.0 if timed else None))

    @rule(pick=st.integers(0, 50))
    def connect(self, pick: int) -> None:
        if not self.waiting:
            return
        identity = self.waiting.pop(pick % len(self.waiting))
        assert self.s.greeted(identity)
        self.running[identity] = []
        self.sent[identity] = 0
        decisions = self.s.connected_worker(identity, self.now)
        assert decisions is not None
        self.apply(decisions)

    @rule(pick=st.integers(0, 50), seconds=st.sampled_from([0.0001, 0.5]))
    def result(self, pick: int, seconds: float) -> None:
        busy = [identity for identity, tasks in self.running.items() if tasks]
        if not busy:
            return
        identity = busy[pick % len(busy)]
        task = self.running[identity].pop(0)
        self.apply(self.s.result(identity, task, seconds, self.now))

    @rule(
        pick=st.integers(0, 50),
        clean=st.booleans(),
        end=st.booleans(),
        cause=st.sampled_from(["task", "infrastructure"]),
    )
    def lose(self, pick: int, clean: bool, end: bool, cause: Cause) -> None:
        if not self.live:
            return
        identity = sorted(self.live)[pick % len(self.live)]
        head = (self.running.get(identity) or [None])[0]
        decisions = self.s.lost(
            identity, self.now, clean=clean, reason="lost", end=end, cause=cause
        )
        resolved = {d.task for d in decisions if isinstance(d, Complete | Fail)}
        if head is not None and not clean and head not in resolved and head not in self.resolved:
            # Only the task's own deaths count crashes (and climb levels); the
            # infrastructure's count interruptions.
            counts = self.crashes if cause == "task" else self.interruptions
            counts[head] = counts.get(head, 0) + 1
        self.forget(identity)
        self.apply(decisions)

    @rule(pick=st.integers(0, 50))
    def cut_off(self, pick: int) -> None:
        if self.running:
            identity = sorted(self.running)[pick % len(self.running)]
            self.cut.add(identity)
            self.s.cut(identity)

    @rule(pick=st.integers(0, 50))
    def busy(self, pick: int) -> None:
        busy = [identity for identity, tasks in self.running.items() if tasks]
        if busy:
            identity = busy[pick % len(busy)]
            self.s.busy(identity, self.running[identity][0], self.now)

    @rule(pick=st.integers(0, 200))
    def cancel(self, pick: int) -> None:
        if self.pushed:
            self.apply(self.s.cancel(pick % self.pushed + 1, self.now))

    @rule(pick=st.integers(0, 50))
    def fail_a_launch(self, pick: int) -> None:
        if not self.launches:
            return
        launch = sorted(self.launches)[pick % len(self.launches)]
        waiting = [identity for identity in self.launches[launch] if identity in self.waiting]
        decisions = self.s.launch_failed(launch, self.now, "failed")
        for identity in waiting:
            self.forget(identity)
        self.apply(decisions)

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, 10.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.apply(self.s.tick(self.now))

    @rule()
    def close(self) -> None:
        self.apply(self.s.close())
        self.closed = True

    def teardown(self) -> None:
        if self.scheduler is None:
            return
        # However the run went, closing and cancelling what is left resolves every task once.
        self.apply(self.s.close())
        self.closed = True
        for task in self.s.unresolved_tasks():
            self.apply(self.s.cancel(task, self.now))
        assert sorted(self.resolved) == list(range(1, self.pushed + 1))


SchedulerMachine.TestCase.settings = settings(
    max_examples=500, stateful_step_count=60, deadline=None
)
test_the_scheduler_keeps_its_invariants_under_any_events = SchedulerMachine.TestCase


@pytest.mark.parametrize("workers", [1, 3])
def test_with_workers_that_always_answer_every_task_resolves(workers: int) -> None:
    scheduler = Scheduler(Settings(workers=workers, crashes_max=2))
    queue: list[Decision] = []
    for task in range(1, 21):
        queue += scheduler.push(task, 0.0)
    resolved: set[int] = set()
    crashed_once = False
    steps = 0
    while queue:
        steps += 1
        assert steps < 10_000
        decision = queue.pop(0)
        if isinstance(decision, Launch):
            for identity in decision.identities:
                queue += scheduler.connected_worker(identity, 0.0) or []
        elif isinstance(decision, Assign):
            if not crashed_once:
                crashed_once = True
                queue += scheduler.lost(decision.worker, 0.0, clean=False, reason="boom")
            else:
                queue += scheduler.result(decision.worker, decision.task, 0.1, 0.0) or []
        elif isinstance(decision, Complete | Fail):
            assert decision.task not in resolved
            resolved.add(decision.task)
    assert resolved == set(range(1, 21))


def test_a_worker_that_says_it_is_busy_is_not_ended_for_silence() -> None:
    scheduler = Scheduler(Settings(workers=1, seconds_interrupt=2.0))
    identity = launched(scheduler.push(1, 0.0, timeout=3.0))[0]
    (first,) = of(Alarm, scheduler.connected_worker(identity, 0.0))
    scheduler.busy(identity, 1, first.at - 0.5)  # still loading or running: alive
    assert not of(End, scheduler.tick(first.at))  # not ended: put off
    later = scheduler.next_deadline()
    assert later is not None
    assert later > first.at
    decisions = scheduler.tick(later)  # silent since: ended, the task timed out
    assert of(End, decisions)
    assert of(Fail, decisions)[0].message.startswith("TimeoutError")


# -- resuming a journal's run -------------------------------------------------------------------


def resumed(workers: int = 2) -> Scheduler:
    """A scheduler resuming a run: launch "old-0" with workers 0 and 1, worker 0 holding
    tasks 1 and 2, task 3 queued; back by 100 s, queued tasks held back until 5 s."""
    scheduler = Scheduler(Settings(workers=workers))
    scheduler.resume("old-0", 0, [0, 1], 100.0, {0: [(1, None), (2, None)]}, holdoff=5.0)
    assert scheduler.push_many([3], 0.0) == []  # held back, and nothing launched
    return scheduler


def test_a_worker_back_keeps_what_it_holds_and_the_rest_runs_again() -> None:
    scheduler = resumed()
    # It holds task 2 only: task 1's result was lost on the way, so task 1 runs again.
    decisions = scheduler.rejoined(b"old-0:0", [2], 1.0)
    assert of(Assign, decisions) == []  # the other worker may still come back with task 1 or 3
    assert scheduler.held(2)
    assert not scheduler.held(1)
    done = scheduler.result(b"old-0:0", 2, 0.1, 2.0)
    assert [complete.task for complete in of(Complete, done)] == [2]
    decisions = scheduler.rejoined(b"old-0:1", [], 3.0)  # all back: the queue goes out
    assert sorted(assign.task for assign in of(Assign, decisions)) == [1, 3]
    assert scheduler.rejoined(b"old-0:1", [], 3.0) is None  # not awaited any more


def test_a_result_before_the_hello_again_claims_a_queued_task() -> None:
    scheduler = resumed()
    # Worker 1 ran task 3, whose hand-over the journal missed, while the controller was away.
    done = scheduler.result(b"old-0:1", 3, 0.1, 1.0)
    assert [complete.task for complete in of(Complete, done)] == [3]
    assert scheduler.result(b"old-0:1", 1, 0.1, 1.0) is None  # worker 0's, not its own


def test_a_task_resolved_meanwhile_is_interrupted_on_the_worker_back() -> None:
    scheduler = resumed()
    decisions = scheduler.rejoined(b"old-0:0", [1, 9], 1.0)
    assert [(cut.worker, cut.task) for cut in of(Interrupt, decisions)] == [(b"old-0:0", 9)]
    assert of(Complete, scheduler.result(b"old-0:0", 1, 0.1, 2.0))
    assert of(Complete, scheduler.result(b"old-0:0", 9, 0.1, 2.0)) == []  # dropped


def test_workers_not_back_in_time_are_ended_and_their_tasks_run_elsewhere() -> None:
    scheduler = resumed()
    # Past the hold-off the queue goes to new workers, for those away may never come.
    decisions = scheduler.tick(5.0)
    assert len(launched(decisions)) == 2
    assert scheduler.next_deadline() == 65.0  # their seconds_launch (100 s is later)
    for identity in launched(decisions):
        scheduler.connected_worker(identity, 6.0)
    decisions = scheduler.tick(100.0)
    abandoned = of(Abandon, decisions)
    assert [(a.launch, a.identities) for a in abandoned] == [("old-0", (b"old-0:0", b"old-0:1"))]
    assert not scheduler.knows(b"old-0:0")
    assert scheduler.failed_launches == 0  # not a failed launch
    # Tasks 1 and 2, reserved for worker 0, run on the new workers (one of which runs task 3).
    assert [assign.task for assign in of(Assign, decisions)] == [1]
    assert scheduler.queued == 1
