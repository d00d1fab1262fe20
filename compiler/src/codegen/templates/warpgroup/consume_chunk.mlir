            %cs = arith.remui %gi, %cST : index
            %cph = arith.divui %gi, %cST : index
{{wait_full}}
            nvvm.fence.proxy {kind = #nvvm.proxy_kind<async.shared>, space = #nvvm.shared_space<cta>}
{{multiply}}
            nvvm.wgmma.wait.group.sync.aligned 1
            %cST1 = arith.subi %cST, %c1 : index
            %cprev0 = arith.addi %gi, %cST1 : index
            %cprev = arith.remui %cprev0, %cST : index
            %cfirst = arith.cmpi eq, {{chunk}}, %c0 : index
{{empty}}
{{spare}}
            %crel = arith.select %cfirst, %cx_ba, %ce_ba : i32
{{release}}
            scf.yield %next : {{acc}}
          }
