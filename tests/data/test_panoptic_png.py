"""COCO panoptic PNG ids (R + 256 G + 256^2 B) through one codec; panopticapi only on use."""

import subprocess
import sys

import numpy as np

from dataseg.data.panoptic_png import rgb_to_segment_ids, segment_ids_to_rgb


def test_round_trip_and_encoding():
    ids = np.array([[0, 1, 255], [256, 65536 + 2, 16_777_215]], dtype=np.int64)
    rgb = segment_ids_to_rgb(ids)
    assert rgb.dtype == np.uint8
    assert rgb[1, 1].tolist() == [2, 0, 1] and rgb[1, 0].tolist() == [0, 1, 0]
    assert np.array_equal(rgb_to_segment_ids(rgb), ids)


def test_import_dataseg_without_panopticapi_and_the_message_on_use():
    code = (
        "import sys; sys.modules['panopticapi'] = None\n"
        "import numpy as np, dataseg\n"
        "from dataseg.data.panoptic_png import rgb_to_segment_ids\n"
        "try:\n"
        "    rgb_to_segment_ids(np.zeros((2, 2, 3), np.uint8))\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "pip install --no-deps panopticapi-lite" in out.stdout
