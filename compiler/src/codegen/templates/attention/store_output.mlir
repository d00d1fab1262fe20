        scf.if %rin{{h}} {
        %yo{{t}}_{{r}}c = arith.constant {{column}} : index
        %yo{{t}}_{{r}} = arith.addi %ob{{h}}, %yo{{t}}_{{r}}c : index
        memref.store {{value}}, %a{{out}}[%yo{{t}}_{{r}}] : memref<{{n}}xf32>
        }
