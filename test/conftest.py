"""Shared test set-up: an isolated ROS 2 environment, the team's fixtures, helpers."""

import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from ovseg_ros.ros.environment import isolated_ros_environment

# Before anything initialises rclpy: this run gets its own DDS domain and ROS_HOME, so
# concurrent runs and stray nodes on the machine cannot interfere.
_ROS_HOME = Path(tempfile.mkdtemp(prefix="ovseg_test_ros_home_"))


def _domain_id() -> int:
    """This test process's DDS domain: Fast DDS maps ids up to 232 to ports; 200 of them make
    two concurrent runs unlikely to share one, and the workers of one run (pytest-xdist) get
    neighbouring ids of their own."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    seed = int(run[:8], 16) if run else os.getpid()
    return 1 + seed % (200 // workers) * workers + worker


os.environ.update(isolated_ros_environment(_ROS_HOME, domain_id=_domain_id()))
# Text-embedding cache of the nodes under test: fresh per run.
os.environ["OVSEG_CACHE_DIR"] = str(_ROS_HOME / "cache")

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
# The ROS 2 tools (launch, CLI verbs, message_filters...) that scripts/setup.sh installs from here.
SHARED_ROS2 = Path(__file__).resolve().parents[2] / "shared" / "ros2"
ROS2_TOOL_MODULES = ("launch", "launch_ros", "launch_testing", "message_filters", "vision_msgs.msg", "diagnostic_updater")
ROS2_TOOL_EXECUTABLES = ("ros2", "launch_test")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not (FIXTURES / "README.md").is_file():
        pytest.fail(f"the team's parity fixtures are missing: expected {FIXTURES} (../shared/fixtures beside the checkout)")
    return FIXTURES


@pytest.fixture(scope="session")
def ros2_tools() -> str:
    """For tests that need the real ROS 2 tools; returns the ``ros2`` executable's path.

    Skips only where ../shared/ros2 is absent (a plain clone elsewhere); where it is there
    (CI, this workplace) the tools must work, so a broken set-up or activation fails.
    """
    if not SHARED_ROS2.is_dir():
        pytest.skip(f"ROS 2 tools not available: {SHARED_ROS2} is absent")
    missing = [name for name in ROS2_TOOL_EXECUTABLES if shutil.which(name) is None]
    for module in ROS2_TOOL_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as error:
            missing.append(f"{module} ({error})")
    if missing:
        pytest.fail(f"{SHARED_ROS2} is there but these ROS 2 tools are not usable: {', '.join(missing)}; run scripts/setup.sh, then source scripts/activate.sh")
    return shutil.which("ros2")


#: Reruns of a failed test that talks over DDS. Fast DDS here (LARGE_DATA, 2 cores, dozens
#: of participants coming and going in one run) now and then never matches a new endpoint:
#: about 1 node start in 100 is not discovered within minutes, or a CLI call never finds a
#: service. A test failing for another reason fails on its reruns too; reruns are listed
#: in the summary (-ra: "R").
DDS_TEST_RERUNS = 2


@pytest.fixture
def peer(request):
    """A ROS participant of the test's own, gone after it (so the nodes of one test are not
    remembered in the next). Modules that share one across their tests define their own."""
    from ovseg_ros.commands.node_driver import Peer  # initialises rclpy: after this run's environment is set

    peer = Peer(f"{request.module.__name__}_peer")
    yield peer
    peer.close()


def pytest_collection_modifyitems(items):
    for item in items:
        if "ros2_tools" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.flaky(reruns=DDS_TEST_RERUNS, reruns_delay=2))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test's report ends with the logs of the nodes it had running (node_settings.serving_node)."""
    outcome = yield
    report = outcome.get_result()
    node_settings = sys.modules.get("node_settings")  # imported by the tests that start nodes
    if report.failed and node_settings is not None:
        for node in node_settings.RUNNING_NODES:
            report.sections.append((f"log of node {node.log_path.stem} (its last 4000 characters)", node.log_text()[-4000:]))


def pytest_sessionfinish(session, exitstatus):
    """This process's DDS participant goes before the interpreter does (see destroy_participant)."""
    if "rclpy" in sys.modules:
        import rclpy

        from ovseg_ros.ros.environment import destroy_participant

        rclpy.try_shutdown()
        destroy_participant()
