        %pk{{chunk}} = arith.constant {{chunk}} : index
        %pin{{chunk}} = arith.cmpi ult, %pk{{chunk}}, %total : index
        scf.if %pin{{chunk}} {
{{issue}}
        }
        nvvm.cp.async.commit.group
