              %cok{{a}} = arith.cmpi ult, %col{{j}}, %cN : index
              scf.if %cok{{a}} {
                %so{{a}} = arith.addi %sb{{row}}, %col{{j}} : index
{{store}}
              }
