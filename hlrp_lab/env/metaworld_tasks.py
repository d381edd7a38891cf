"""Meta-World's tasks: v3 names, descriptions (the instructions), the MT50 difficulty groups, cameras, and the
published success rates a study compares with.

Descriptions and difficulty groups are LeRobot's (``src/lerobot/envs/metaworld_config.json``,
``TASK_DESCRIPTIONS`` and ``DIFFICULTY_TO_TASKS``, huggingface/lerobot at commit 7427f31), so that
``pc_success/<group>`` means what it means in LeRobot's and SmolVLA's Meta-World results (docs/METAWORLD.md).
"""

from typing import Literal

TASK_DESCRIPTIONS = {
    "assembly-v3": "Pick up a nut and place it onto a peg",
    "basketball-v3": "Dunk the basketball into the basket",
    "bin-picking-v3": "Grasp the puck from one bin and place it into another bin",
    "box-close-v3": "Grasp the cover and close the box with it",
    "button-press-topdown-v3": "Press a button from the top",
    "button-press-topdown-wall-v3": "Bypass a wall and press a button from the top",
    "button-press-v3": "Press a button",
    "button-press-wall-v3": "Bypass a wall and press a button",
    "coffee-button-v3": "Push a button on the coffee machine",
    "coffee-pull-v3": "Pull a mug from a coffee machine",
    "coffee-push-v3": "Push a mug under a coffee machine",
    "dial-turn-v3": "Rotate a dial 180 degrees",
    "disassemble-v3": "Pick a nut out of a peg",
    "door-close-v3": "Close a door with a revolving joint",
    "door-lock-v3": "Lock the door by rotating the lock clockwise",
    "door-open-v3": "Open a door with a revolving joint",
    "door-unlock-v3": "Unlock the door by rotating the lock counter-clockwise",
    "drawer-close-v3": "Push and close a drawer",
    "drawer-open-v3": "Open a drawer",
    "faucet-close-v3": "Rotate the faucet clockwise",
    "faucet-open-v3": "Rotate the faucet counter-clockwise",
    "hammer-v3": "Hammer a screw on the wall",
    "hand-insert-v3": "Insert the gripper into a hole",
    "handle-press-side-v3": "Press a handle down sideways",
    "handle-press-v3": "Press a handle down",
    "handle-pull-side-v3": "Pull a handle up sideways",
    "handle-pull-v3": "Pull a handle up",
    "lever-pull-v3": "Pull a lever down 90 degrees",
    "peg-insert-side-v3": "Insert a peg sideways",
    "peg-unplug-side-v3": "Unplug a peg sideways",
    "pick-out-of-hole-v3": "Pick up a puck from a hole",
    "pick-place-v3": "Pick and place a puck to a goal",
    "pick-place-wall-v3": "Pick a puck, bypass a wall and place the puck",
    "plate-slide-back-side-v3": "Get a plate from the cabinet sideways",
    "plate-slide-back-v3": "Get a plate from the cabinet",
    "plate-slide-side-v3": "Slide a plate into a cabinet sideways",
    "plate-slide-v3": "Slide a plate into a cabinet",
    "push-back-v3": "Push the puck to a goal",
    "push-v3": "Push the puck to a goal",
    "push-wall-v3": "Bypass a wall and push a puck to a goal",
    "reach-v3": "Reach a goal position",
    "reach-wall-v3": "Bypass a wall and reach a goal",
    "shelf-place-v3": "Pick and place a puck onto a shelf",
    "soccer-v3": "Kick a soccer into the goal",
    "stick-pull-v3": "Grasp a stick and pull a box with the stick",
    "stick-push-v3": "Grasp a stick and push a box using the stick",
    "sweep-into-v3": "Sweep a puck into a hole",
    "sweep-v3": "Sweep a puck off the table",
    "window-close-v3": "Push and close a window",
    "window-open-v3": "Push and open a window",
}
# LeRobot's DIFFICULTY_TO_TASKS (see the module docstring): 28, 11, 6 and 5 tasks, together MT50.
DIFFICULTY_GROUPS = ("easy", "medium", "hard", "very_hard")
TASK_SETS = {
    "easy": [
        *(
            "button-press-v3",
            "button-press-topdown-v3",
            "button-press-topdown-wall-v3",
            "button-press-wall-v3",
        ),
        *("coffee-button-v3", "dial-turn-v3", "door-close-v3", "door-lock-v3", "door-open-v3"),
        *("door-unlock-v3", "drawer-close-v3", "drawer-open-v3", "faucet-close-v3", "faucet-open-v3"),
        *("handle-press-v3", "handle-press-side-v3", "handle-pull-v3", "handle-pull-side-v3"),
        *("lever-pull-v3", "plate-slide-v3", "plate-slide-back-v3", "plate-slide-back-side-v3"),
        *("plate-slide-side-v3", "reach-v3", "reach-wall-v3", "window-close-v3", "window-open-v3"),
        "peg-unplug-side-v3",
    ],
    "medium": [
        *("basketball-v3", "bin-picking-v3", "box-close-v3", "coffee-pull-v3", "coffee-push-v3"),
        *("hammer-v3", "peg-insert-side-v3", "push-wall-v3", "soccer-v3", "sweep-v3", "sweep-into-v3"),
    ],
    "hard": [
        "assembly-v3",
        "hand-insert-v3",
        "pick-out-of-hole-v3",
        "pick-place-v3",
        "push-v3",
        "push-back-v3",
    ],
    "very_hard": ["shelf-place-v3", "disassemble-v3", "stick-pull-v3", "stick-push-v3", "pick-place-wall-v3"],
    "mt10": [
        *("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3"),
        *("button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3"),
    ],
    "mt50": sorted(TASK_DESCRIPTIONS),
}
# The cameras of Meta-World's scene (xyz_base.xml); the corner ones render upside-down.
Camera = Literal["corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV"]
# LeRobot's Meta-World image: its "corner2" camera moved to (0.75, 0.075, 0.7), which is corner4's pose (same
# orientation and field of view: the same pixels), flipped on both axes as the lab flips every corner camera.
LEROBOT_CAMERA = "corner4"
MAX_PATH_LENGTH = (
    500  # Meta-World refuses to step an episode further; LeRobot's episodes run this long at most
)
# Published Meta-World success (%) to print beside ours: the SmolVLA paper's (Shukor et al. 2025,
# arXiv:2506.01844) Meta-World average over MT50: the mean of the four difficulty groups' success rates
# (compare ``pc_success_group_mean``).
ANCHORS = {"SmolVLA (0.45B)": 57.3, "pi0 (3.3B)": 47.9}


def task_group(task: str) -> str:
    """The difficulty group (``DIFFICULTY_GROUPS``) of a Meta-World v3 task."""
    return next(group for group in DIFFICULTY_GROUPS if task in TASK_SETS[group])


def resolve_tasks(tasks: str) -> list[str]:
    """The task names of a ``tasks`` string: a task set's name, or comma-separated task names."""
    if tasks.strip() in TASK_SETS:
        return TASK_SETS[tasks.strip()]
    names = list(dict.fromkeys(name.strip() for name in tasks.split(",") if name.strip()))
    unknown = [name for name in names if name not in TASK_DESCRIPTIONS]
    if unknown or not names:
        raise ValueError(
            f"unknown Meta-World tasks {unknown}: give v3 names such as reach-v3,push-v3, or one of "
            f"{', '.join(TASK_SETS)}"
        )
    return names
