"""Official parity: every case folder under VTX_PARITY_CASES (default ../shared/parity/cases),
whatever its family, converted and run in-process by `convert.verify.verify_case`."""
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = os.path.join(REPO, os.environ.get('VTX_PARITY_CASES', '../shared/parity/cases'))


def _case_dirs():
    if not os.path.isdir(CASES):
        return []
    return sorted(d for d in os.listdir(CASES)
                  if os.path.isfile(os.path.join(CASES, d, 'manifest.json')))


def test_cases_found():
    assert _case_dirs(), f'no parity cases (folders with manifest.json) under {CASES}'


@pytest.mark.parametrize('case', _case_dirs())
def test_parity(case):
    from convert.verify import verify_case
    result = verify_case(os.path.join(CASES, case), log=None)
    assert result['passed'], f'{case}: {json.dumps(result)}'
