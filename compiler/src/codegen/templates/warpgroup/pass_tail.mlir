{{accumulators}}
          %acc = llvm.inline_asm has_side_effects asm_dialect = att "wgmma.wait_group.sync.aligned 0;", "{{outs}},{{ties}}" {{values}} : ({{types}}) -> {{acc}}
{{release}}
{{store}}
        }
