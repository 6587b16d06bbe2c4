"""Maze variants of the ant: grid layouts and the static walls they put into an MjSpec.

The layouts and the world convention follow the paper's code base (JaxGCRL `ant_maze`, which
the depth-scaling CRL paper reuses), so goal and start coordinates are comparable with its
results:

* cell (i, j) is row i, column j of the layout; its centre is at world
  (x, y) = (i * cell_size, j * cell_size). Rows grow along +x and columns along +y, so a printed
  layout is the world seen from above rotated by 90 degrees. Cell (0, 0) is centred on the world
  origin and the outer wall ring occupies row/column 0 and the last row/column.
* a wall cell is a box filling the whole cell (half-size cell_size / 2 in x and y) and
  `WALL_HEIGHT_FRACTION * cell_size` tall (2 m for the paper's cell size of 4 m), standing on
  the floor.
* the robot starts at the centre of an "R" cell and goals are the centres of "G" cells; the paper
  samples both uniformly from those cells without extra noise. Its success radius is 0.5 m.

The walls use contact bit 1 (contype 2, conaffinity 0): they touch whatever geoms of the robot
declare conaffinity bit 1 (in ant.xml: torso, shins and feet) and nothing else, so a maze adds
only robot-wall pairs to MJX's collision work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco

WALL = "1"
FREE = "0"
START = "R"
GOAL = "G"
SYMBOLS = frozenset({WALL, FREE, START, GOAL})

# Wall height as a fraction of the cell size: the paper's MAZE_HEIGHT (0.5 * 4 m = 2 m walls, far
# above anything the ant can climb).
WALL_HEIGHT_FRACTION = 0.5
# Contact bit the walls occupy (bit 0 is the ground); robots opt in with conaffinity bit 1.
WALL_CONTYPE = 2
WALL_RGBA = (0.7, 0.5, 0.3, 1.0)
# MJX narrow-phase budget per collision function (sphere-box, capsule-box): the pairs whose
# bounding spheres are closest are kept. 12 covers an ant touching a corner (torso, two feet and
# two shins against two walls) with room to spare, at about half the cost of checking every pair.
MAX_GEOM_PAIRS = 12
# Top-down `overview` camera: vertical field of view (deg) and margin around the layout.
OVERVIEW_FOVY = 45.0
OVERVIEW_MARGIN = 1.1

Cell = tuple[int, int]


@dataclass(frozen=True)
class MazeLayout:
    """A rectangular grid of cells: "1" wall, "0" free, "R" start (free), "G" goal (free).

    Frozen and built from tuples so a layout can be a dict key, a jit static argument, or a
    module constant that no caller can mutate.
    """

    cells: tuple[tuple[str, ...], ...]
    cell_size: float

    def __post_init__(self) -> None:
        if not self.cells or not self.cells[0]:
            raise ValueError("maze layout: no cells")
        width = len(self.cells[0])
        for i, row in enumerate(self.cells):
            if len(row) != width:
                raise ValueError(f"maze layout: row {i} has {len(row)} cells, row 0 has {width}")
            bad = set(row) - SYMBOLS
            if bad:
                raise ValueError(f"maze layout: row {i} has unknown symbols {sorted(bad)}")
        if not self.cell_size > 0:
            raise ValueError(f"maze layout: cell_size must be positive, got {self.cell_size}")

    @classmethod
    def from_rows(cls, rows: tuple[str, ...] | list[str], cell_size: float) -> MazeLayout:
        """Build a layout from one string per row, e.g. ("111", "1R1", "111")."""
        return cls(tuple(tuple(row) for row in rows), float(cell_size))

    def without_goal(self, cell: Cell) -> MazeLayout:
        """This layout with the goal at `cell` made a free cell."""
        i, j = cell
        if self.cells[i][j] != GOAL:
            raise ValueError(f"maze layout: cell {cell} is no goal")
        row = (*self.cells[i][:j], FREE, *self.cells[i][j + 1:])
        return MazeLayout((*self.cells[:i], row, *self.cells[i + 1:]), self.cell_size)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.cells), len(self.cells[0])

    @property
    def wall_height(self) -> float:
        return WALL_HEIGHT_FRACTION * self.cell_size

    def _where(self, symbols: frozenset[str]) -> tuple[Cell, ...]:
        return tuple(
            (i, j) for i, row in enumerate(self.cells) for j, c in enumerate(row) if c in symbols
        )

    def wall_cells(self) -> tuple[Cell, ...]:
        return self._where(frozenset({WALL}))

    def free_cells(self) -> tuple[Cell, ...]:
        """Cells the robot may occupy (free, start and goal cells), in row-major order."""
        return self._where(frozenset({FREE, START, GOAL}))

    def start_cells(self) -> tuple[Cell, ...]:
        return self._where(frozenset({START}))

    def goal_cells(self) -> tuple[Cell, ...]:
        return self._where(frozenset({GOAL}))

    def cell_center(self, i: int, j: int) -> tuple[float, float]:
        """World (x, y) of the centre of cell (i, j): row i along +x, column j along +y."""
        rows, cols = self.shape
        if not (0 <= i < rows and 0 <= j < cols):
            raise IndexError(f"maze cell ({i}, {j}) is outside a {rows}x{cols} layout")
        return i * self.cell_size, j * self.cell_size

    def cell_of(self, x: float, y: float) -> Cell:
        """The cell whose square contains world point (x, y) (inverse of cell_center)."""
        return math.floor(x / self.cell_size + 0.5), math.floor(y / self.cell_size + 0.5)


def add_maze_walls(
    spec: mujoco.MjSpec,
    layout: MazeLayout,
    *,
    root_body: str | None = "torso",
    max_geom_pairs: int | None = MAX_GEOM_PAIRS,
) -> None:
    """Add one static box geom per wall cell to `spec`'s world body (named `wall_{i}_{j}`),
    plus a top-down camera `overview` over the whole layout.

    If `root_body` names a body of the spec (the ant's torso by default), its initial xy is
    moved to the first start cell, so qpos0 (what mj_resetData and mjx.make_data start from) is
    a collision-free pose inside the maze rather than inside the wall at the origin. Envs still
    place the robot themselves at reset; this only keeps defaults safe.

    `max_geom_pairs` sets MJX's `max_geom_pairs` numeric (unless the spec already has one): MJX
    otherwise runs the narrow phase on every robot-geom/wall pair (162 for the ant in U_MAZE)
    every step, although a robot near a wall touches at most a few. It only affects MJX, not
    plain MuJoCo; None leaves every pair in.
    """
    half = layout.cell_size / 2
    height = layout.wall_height
    for i, j in layout.wall_cells():
        x, y = layout.cell_center(i, j)
        spec.worldbody.add_geom(
            name=f"wall_{i}_{j}",
            type=mujoco.mjtGeom.mjGEOM_BOX,
            pos=[x, y, height / 2],
            size=[half, half, height / 2],
            contype=WALL_CONTYPE,
            conaffinity=0,
            rgba=list(WALL_RGBA),
        )
    # A fixed top-down view of the whole maze (the ant's `track` camera ends up behind walls);
    # cameras look along their -z, so the default orientation already looks down.
    rows, cols = layout.shape
    half_width = max(rows, cols) * half * OVERVIEW_MARGIN
    spec.worldbody.add_camera(
        name="overview",
        pos=[
            (rows - 1) * half,
            (cols - 1) * half,
            half_width / math.tan(math.radians(OVERVIEW_FOVY / 2)),
        ],
        fovy=OVERVIEW_FOVY,
    )
    starts = layout.start_cells()
    if root_body is not None and starts:
        body = spec.body(root_body)
        if body is None:
            raise ValueError(f"add_maze_walls: spec has no body named {root_body!r}")
        x, y = layout.cell_center(*starts[0])
        body.pos = [x, y, body.pos[2]]
    if max_geom_pairs is not None and not any(n.name == "max_geom_pairs" for n in spec.numerics):
        spec.add_numeric(name="max_geom_pairs", data=[float(max_geom_pairs)])


# The paper's layouts (JaxGCRL envs/ant_maze.py), cell size 4 m. Training layouts mark every
# free cell except the start as a goal; the *_EVAL layouts keep only the hard, far goals.
U_MAZE = MazeLayout.from_rows(
    (
        "11111",
        "1RGG1",
        "111G1",
        "1GGG1",
        "11111",
    ),
    4.0,
)

U_MAZE_EVAL = MazeLayout.from_rows(
    (
        "11111",
        "1R001",
        "11101",
        "1GGG1",
        "11111",
    ),
    4.0,
)

BIG_MAZE = MazeLayout.from_rows(
    (
        "11111111",
        "1RG11GG1",
        "1GG1GGG1",
        "11GGG111",
        "1GG1GGG1",
        "1G1GG1G1",
        "1GGG1GG1",
        "11111111",
    ),
    4.0,
)

BIG_MAZE_EVAL = MazeLayout.from_rows(
    (
        "11111111",
        "1R011GG1",
        "10010GG1",
        "11000111",
        "10010001",
        "101G01G1",
        "10GG1GG1",
        "11111111",
    ),
    4.0,
)

HARDEST_MAZE = MazeLayout.from_rows(
    (
        "111111111111",
        "1RGGG1GGGGG1",
        "1G11G1G1G1G1",
        "1GGGGGG1GGG1",
        "1G1111G111G1",
        "1GG1G1GGGGG1",
        "11G1G1G1G111",
        "1GG1GGG1GGG1",
        "111111111111",
    ),
    4.0,
)

# The paper's own code (scaling-crl `envs/ant_maze.py`) evaluates the ant's Big Maze on one goal
# fewer than BIG_MAZE_EVAL (JaxGCRL's, which its humanoid maze keeps): cell (2, 5) is no goal.
ANT_BIG_MAZE_EVAL = BIG_MAZE_EVAL.without_goal((2, 5))

# The paper's longer U-mazes: the corridor from the start folds back 4 (U4) or 5 (U5) cells
# away from where it began, so the nearest goal in space is the farthest along the corridor.
U4_MAZE = MazeLayout.from_rows(
    (
        "11111",
        "1GGG1",
        "1R1G1",
        "111G1",
        "1G1G1",
        "1GGG1",
        "11111",
    ),
    4.0,
)

U4_MAZE_EVAL = MazeLayout.from_rows(
    (
        "11111",
        "10001",
        "1R101",
        "11101",
        "1G101",
        "1GGG1",
        "11111",
    ),
    4.0,
)

U5_MAZE = MazeLayout.from_rows(
    (
        "11111111",
        "1GGGGGG1",
        "1R1111G1",
        "111111G1",
        "1G1111G1",
        "1GGGGGG1",
        "11111111",
    ),
    4.0,
)

U5_MAZE_EVAL = MazeLayout.from_rows(
    (
        "11111111",
        "10000001",
        "1R111101",
        "11111101",
        "1G1111G1",
        "1GGGGGG1",
        "11111111",
    ),
    4.0,
)

LAYOUTS: dict[str, MazeLayout] = {
    "u_maze": U_MAZE,
    "u_maze_eval": U_MAZE_EVAL,
    "big_maze": BIG_MAZE,
    "big_maze_eval": BIG_MAZE_EVAL,
    "ant_big_maze_eval": ANT_BIG_MAZE_EVAL,
    "hardest_maze": HARDEST_MAZE,
    "u4_maze": U4_MAZE,
    "u4_maze_eval": U4_MAZE_EVAL,
    "u5_maze": U5_MAZE,
    "u5_maze_eval": U5_MAZE_EVAL,
}
