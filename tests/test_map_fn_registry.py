"""A map fn is registered where it is defined, and its fields are declared there once:
MAP_FUNC, the package's names, the error messages and `xft list-dataset-format` all read them."""
import pytest

import xft.dataset.map_fns as map_fns
from xft.dataset.map_fns._fields import describe_fields, expected_fields, require_text
from xft.registry import MAP_FUNC, register_map_fn
from xft.tools.dataset_tools import list_dataset_format_main
from xft.utils.errors import DataError

REGISTERED = map_fns.registered_map_fns()


def test_the_package_registers_every_map_fn_and_exports_it_under_its_name():
    assert len(REGISTERED) == 21
    for name, map_fn in REGISTERED.items():
        assert MAP_FUNC.get(name) is map_fn is getattr(map_fns, name)
        assert map_fn.__name__ == name and name in map_fns.__all__
        assert map_fn.fields, f'{name} declares no fields'


@pytest.mark.parametrize('name', sorted(REGISTERED))
def test_a_row_without_the_fields_gets_the_declared_ones_in_the_error(name):
    map_fn = REGISTERED[name]
    with pytest.raises(DataError) as error:
        map_fn({'unrelated': 'x'})
    assert str(error.value).startswith(f'{name} expects fields {expected_fields(map_fn)}; ')
    assert "(row has 'unrelated')" in str(error.value)


def test_list_dataset_format_prints_each_registered_map_fn_with_its_fields(capsys):
    assert list_dataset_format_main([]) == 0
    out = capsys.readouterr().out
    for name, map_fn in REGISTERED.items():
        assert f'{name:28s}{describe_fields(map_fn)}' in out


def test_register_map_fn_is_the_only_step_for_a_new_map_fn():
    @register_map_fn(fields=('question', 'reply (optional)'), alternative=('q', 'a'))
    def faq_test_only_map_fn(example):
        return {'conversation': [{'input': require_text(example, 'question', faq_test_only_map_fn),
                                  'output': require_text(example, 'reply', faq_test_only_map_fn,
                                                         default='')}]}
    try:
        from xft.dataset.options import resolve_map_fn
        assert resolve_map_fn('faq_test_only_map_fn') is faq_test_only_map_fn
        assert faq_test_only_map_fn.fields == ('question', 'reply (optional)')
        assert describe_fields(faq_test_only_map_fn) == 'question, reply (optional); or q, a'
        with pytest.raises(DataError, match=r"^faq_test_only_map_fn expects fields 'question', "
                                            r"'reply' \(or 'q', 'a'\); field 'question'"):
            faq_test_only_map_fn({'q': 'x'})
    finally:
        MAP_FUNC.module_dict.pop('faq_test_only_map_fn', None)
