"""Install crl_runtime: nodes in lib/crl_runtime; launch, config, controllers, rviz in share/."""

from glob import glob

from setuptools import setup

PACKAGE = "crl_runtime"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=[PACKAGE],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/controllers", glob("controllers/*.yaml")),
        (f"share/{PACKAGE}/rviz", glob("rviz/*.rviz")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="crl maintainers",
    maintainer_email="maintainers@users.noreply.github.com",
    description="crl goal-reaching policies on ROS 2: goal_reach and sim_bridge nodes.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            f"goal_reach = {PACKAGE}.goal_reach:main",
            f"sim_bridge = {PACKAGE}.sim_bridge:main",
        ],
    },
)
