        %s{{j}}_{{r}}h = arith.truncf %s{{j}}_{{r}}a : f32 to bf16
        {{s}}r = arith.extf %s{{j}}_{{r}}h : bf16 to f32
        %o{{j}}_{{r}}0 = arith.addi %srow{{row}}, %key{{j}}_{{key}} : index
