"""Rotation phrasings and story sentences as data.

A rotation template says which (angle, direction) turns it can express; the
generator picks among the templates that fit a turn, so adding a phrasing is
adding a row here, never a branch in code. Placeholders: ``{angle}`` (degrees),
``{angle_full}`` (degrees plus a full turn), ``{dir}`` (left/right),
``{clock}`` (clockwise/counterclockwise).
"""

from __future__ import annotations

ANY = None  # "angles": ANY means every multiple of the slot angle (except 0 and 360); 360 only when listed

ROTATION_TEMPLATES: list[dict] = [
    {"id": "deg_to_your_dir", "text": "turn {angle} degrees to your {dir}", "angles": ANY, "dirs": ["left", "right"]},
    {"id": "rotate_deg_clock", "text": "rotate {angle} degrees {clock}", "angles": ANY, "dirs": ["left", "right"]},
    {"id": "turn_dir_by_deg", "text": "turn {dir} by {angle} degrees", "angles": ANY, "dirs": ["left", "right"]},
    {"id": "spin_deg_to_the_dir", "text": "spin {angle} degrees to the {dir}", "angles": ANY, "dirs": ["left", "right"]},
    {"id": "full_plus_deg", "text": "spin {angle_full} degrees to your {dir}", "angles": ANY, "dirs": ["left", "right"]},
    {"id": "turn_dir", "text": "turn {dir}", "angles": [90], "dirs": ["left", "right"]},
    {"id": "quarter_turn", "text": "make a quarter turn to the {dir}", "angles": [90], "dirs": ["left", "right"]},
    {"id": "three_quarter_turn", "text": "make a three-quarter turn to the {dir}", "angles": [270], "dirs": ["left", "right"]},
    {"id": "eighth_turn", "text": "make an eighth of a turn to the {dir}", "angles": [45], "dirs": ["left", "right"]},
    {"id": "full_turn", "text": "make a full turn to the {dir}", "angles": [360], "dirs": ["left", "right"]},
    {"id": "turn_around", "text": "turn around", "angles": [180], "dirs": []},
    {"id": "half_turn", "text": "make a half turn", "angles": [180], "dirs": []},
    {"id": "face_opposite", "text": "turn to face the opposite direction", "angles": [180], "dirs": []},
]

TEMPLATE_IDS = [t["id"] for t in ROTATION_TEMPLATES]
CLOCK = {"right": "clockwise", "left": "counterclockwise"}

OPENINGS = [
    "You are standing in {room}. In front of you is the {obj}.",
    "You are in {room}, facing the {obj}.",
    "Imagine you stand in {room} and see the {obj} in front of you.",
]
STEP_LEADS = ["Then you", "Next, you", "After that, you", "Now you"]
OBSERVATIONS = [" You now see the {obj}.", " In front of you is the {obj}.", " Now the {obj} is in front of you."]
QUESTION = " What is in front of you now?"
ANSWER_CUE = "\nAnswer:"
CHAT_INSTRUCTION = " Answer with the name of one object, or 'unknown' if it cannot be known."

ROOMS: dict[str, list[str]] = {
    "bedroom": ["bed", "wardrobe", "mirror", "window", "desk", "lamp", "dresser", "bookshelf", "chair", "poster", "rug", "clock", "plant", "radiator"],
    "kitchen": ["fridge", "sink", "oven", "window", "table", "cupboard", "microwave", "kettle", "dishwasher", "stove", "toaster", "shelf", "bin", "clock"],
    "living room": ["sofa", "television", "fireplace", "window", "bookshelf", "armchair", "lamp", "piano", "painting", "door", "plant", "clock", "rug", "cabinet"],
    "office": ["desk", "printer", "window", "whiteboard", "bookshelf", "door", "computer", "cabinet", "plant", "chair", "clock", "map", "lamp", "phone"],
    "bathroom": ["sink", "mirror", "bathtub", "shower", "toilet", "towel", "window", "door", "cabinet", "scale", "basket", "radiator", "shelf", "lamp"],
    "classroom": ["blackboard", "door", "window", "desk", "globe", "bookshelf", "clock", "map", "projector", "poster", "computer", "plant", "cabinet", "bin"],
    "garage": ["car", "bicycle", "workbench", "door", "ladder", "toolbox", "shelf", "window", "freezer", "lawnmower", "bin", "tires", "hose", "lamp"],
    "library": ["bookshelf", "desk", "window", "globe", "lamp", "door", "ladder", "sofa", "computer", "clock", "painting", "plant", "statue", "counter"],
}
